"""Secure aggregation for tff_med: pairwise masking (Bonawitz et al., CCS 2017) in
pure Python/numpy; the server learns only the modular sum of hospitals' quantised
updates. See `tff_med.secure_agg.masking` for the protocol and its threat model."""

from tff_med.secure_agg.masking import (Hospital, PublicKeys, Quantizer, Reveal,
                                        SecureAggregationAborted, Server, expand_mask,
                                        secure_sum)

__all__ = ['Hospital', 'PublicKeys', 'Quantizer', 'Reveal', 'SecureAggregationAborted',
           'Server', 'expand_mask', 'secure_sum']

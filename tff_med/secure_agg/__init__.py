"""Secure aggregation for tff_med: pairwise masking (Bonawitz et al., CCS 2017) in
pure Python/numpy; the server learns only the modular sum of hospitals' quantised
updates. See `tff_med.secure_agg.masking` for the protocol and its threat model."""

from tff_med.secure_agg.masking import (Hospital, PublicKeys, Reveal, SecureAggregationAborted,
                                        Server, expand_mask, secure_sum)
from tff_med.secure_agg.tff_secure_sum import QuantizedSecureSumFactory, Quantizer

__all__ = ['Hospital', 'PublicKeys', 'QuantizedSecureSumFactory', 'Quantizer', 'Reveal',
           'SecureAggregationAborted', 'Server', 'expand_mask', 'secure_sum']

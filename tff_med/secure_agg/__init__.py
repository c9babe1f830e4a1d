"""Secure aggregation for tff_med: pairwise masking (Bonawitz et al., CCS 2017) in
pure Python/numpy; the server learns only the modular sum of hospitals' quantised
updates. See `tff_med.secure_agg.masking` for the protocol and its threat model,
`tff_med.secure_agg.ddp` for distributed DP under it."""

from tff_med.secure_agg.masking import (Hospital, MaskingRound, PublicKeys, Reveal,
                                        SecureAggregationAborted, Server, expand_mask,
                                        sample_discrete_gaussian, secure_sum)
from tff_med.secure_agg.tff_secure_sum import QuantizedSecureSumFactory, Quantizer

__all__ = ['Hospital', 'MaskingRound', 'PublicKeys', 'QuantizedSecureSumFactory', 'Quantizer',
           'Reveal', 'SecureAggregationAborted', 'Server', 'expand_mask',
           'sample_discrete_gaussian', 'secure_sum']

"""Differential privacy for tff_med: DP events, epsilon, noise calibration and the
per-hospital (record level) or federation-wide (hospital level) privacy ledger."""

from tff_med.privacy.accounting import (ACCOUNTANTS, LEVELS, PrivacyLedger,
                                        calibrate_noise_multiplier, check_hospital_delta,
                                        check_record_delta, substitution_bound,
                                        default_record_delta, dp_sgd_event, epsilon,
                                        make_accountant, sampled_round_event)

__all__ = ['ACCOUNTANTS', 'LEVELS', 'PrivacyLedger', 'calibrate_noise_multiplier',
           'check_hospital_delta', 'check_record_delta', 'default_record_delta', 'dp_sgd_event',
           'epsilon', 'make_accountant', 'sampled_round_event', 'substitution_bound']

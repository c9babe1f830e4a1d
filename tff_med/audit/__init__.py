"""Privacy audits of trained models: membership inference per hospital."""

from tff_med.audit.membership import (DEFAULT_ATTACKS, AttackType, attack_inputs, audit,
                                      audit_hospital, audit_local_model)

__all__ = ['DEFAULT_ATTACKS', 'AttackType', 'attack_inputs', 'audit', 'audit_hospital',
           'audit_local_model']

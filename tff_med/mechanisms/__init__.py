"""The mechanisms of a federated study as round plans (`round_plan.RoundPlan`):
aggregations (plain, TFF secure sum, masking), privacy mechanisms that wrap them
(record-level and hospital-level DP), the baselines, and `plans.build_plan`,
the one table of which combinations a run may use."""

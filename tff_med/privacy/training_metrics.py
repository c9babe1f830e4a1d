"""Training statistics under DP: none reach the server.

TFF's learning builders sum each hospital's training loss, accuracy and AUC to
the server in the clear (`tff.learning.metrics.sum_then_finalize`): exact
statistics of the training records, outside every DP mechanism. Under `--dp`
the builders get `no_training_metrics` as their `metrics_aggregator` instead.
"""

import collections

import tensorflow_federated as tff


def no_training_metrics(metric_finalizers, local_unfinalized_metrics_type=None):
  """A `metrics_aggregator` for `tff.learning` builders that aggregates nothing:
  the hospitals' metrics stay CLIENTS-placed and the server gets an empty dict."""
  del metric_finalizers, local_unfinalized_metrics_type  # Nothing is aggregated.

  @tff.federated_computation
  def aggregate(client_metrics):
    del client_metrics
    return tff.federated_value(collections.OrderedDict(), tff.SERVER)

  return aggregate

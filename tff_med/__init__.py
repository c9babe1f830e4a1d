"""tff_med: cross-silo federated learning for hospitals on TensorFlow Federated.

Importing tff_med puts TFF's `worker_binary` process under `tff_med.runtime`'s
ownership: it is stopped at exit, on SIGTERM and after each training run.
"""

from tff_med import runtime  # noqa: F401  (owns TFF's worker process from import on)

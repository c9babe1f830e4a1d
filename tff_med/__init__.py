"""tff_med: cross-silo federated learning for hospitals on TensorFlow Federated.

TFF's `worker_binary` process is owned by `tff_med.runtime` from the moment a run
enters its execution context: it is stopped at exit, on SIGTERM, after each
training run, and dies with its Python process.
"""

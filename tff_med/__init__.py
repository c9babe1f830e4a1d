"""tff_med: cross-silo federated learning for hospitals on TensorFlow Federated."""

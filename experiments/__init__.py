"""absl experiment binaries: `python -m experiments.NAME --helpfull`."""

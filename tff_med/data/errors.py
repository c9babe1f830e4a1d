"""The one error type for bad input data."""


class DataError(ValueError):
  """Input data is unusable; the message names the hospital, file, row or column."""

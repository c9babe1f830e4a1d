"""Checks shared by the config dataclasses."""

import dataclasses


def refuse_set_when_off(config, section: str, switch: str, applies: str) -> None:
  """With `config`'s field `switch` off, every other field must keep its
  default: a run that silently ignored one would not be the run asked for.
  ValueError naming the first field set, as `section.field`; `applies`: the
  settings under which the fields are read."""
  off = getattr(config, switch)
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if field.name != switch and value != field.default:
      raise ValueError(f'{section}.{field.name}={value} is set but {section}.{switch}={off}: '
                       f'it applies only with {applies}')

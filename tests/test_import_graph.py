"""The package's import graph reads binaries -> training loop -> mechanisms ->
TFF building blocks -> data/models, with no import back up; absl only under
experiments/."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Lowest layer first; a module may import only from its own layer or below.
LAYERS = (
    ('data and models', ('tff_med.data', 'tff_med.models', 'tff_med.evaluation',
                         'tff_med.serving')),
    ('TFF building blocks', ('tff_med.algorithms', 'tff_med.privacy', 'tff_med.secure_agg',
                             'tff_med.outputs', 'tff_med.runtime', 'tff_med.config',
                             'tff_med.config_fields',
                             'tff_med.audit_log', 'tff_med.personalization',
                             'tff_med.program_state')),
    ('mechanisms', ('tff_med.mechanisms', 'tff_med.remote')),
    ('training loop', ('tff_med.training', 'tff_med.run_state')),
    ('studies over runs', ('tff_med.grid', 'tff_med.compare', 'tff_med.robustness',
                           'tff_med.privacy_sweep', 'tff_med.privacy_report',
                           'tff_med.secure_agg.cost_table', 'tff_med.audit')),
    ('binaries', ('experiments',)),
)


def _layer(module: str) -> int | None:
  """Index of the layer of `module` (the longest matching prefix wins)."""
  best = None
  for index, (_, prefixes) in enumerate(LAYERS):
    for prefix in prefixes:
      if module == prefix or module.startswith(prefix + '.'):
        if best is None or len(prefix) > best[1]:
          best = (index, len(prefix))
  return best[0] if best else None


def _modules():
  for folder in ('tff_med', 'experiments'):
    for path in (ROOT / folder).rglob('*.py'):
      parts = path.relative_to(ROOT).with_suffix('').parts
      yield '.'.join(parts[:-1] if parts[-1] == '__init__' else parts), path


def _imports(module: str, path: pathlib.Path) -> set[str]:
  """Absolute names of the project modules `path` imports."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      for alias in node.names:  # `from tff_med import training` names a module.
        candidate = f'{node.module}.{alias.name}'
        is_module = any(m == candidate for m, _ in _modules())
        names.add(candidate if is_module else node.module)
  del module
  return {n for n in names if n.split('.')[0] in ('tff_med', 'experiments', 'absl')}


def test_no_module_imports_from_a_layer_above_its_own():
  upward = []
  for module, path in _modules():
    own = _layer(module)
    if own is None:  # The package roots themselves import nothing here.
      assert not _imports(module, path) - {'tff_med', 'experiments'}, module
      continue
    for name in _imports(module, path):
      other = _layer(name)
      if other is not None and other > own:
        upward.append(f'{module} ({LAYERS[own][0]}) imports {name} ({LAYERS[other][0]})')
  assert not upward, '\n'.join(upward)


def test_absl_only_under_experiments():
  users = [module for module, path in _modules()
           if not module.startswith('experiments')
           and any(n.startswith('absl') for n in _imports(module, path))]
  assert not users, users


def test_every_module_has_a_layer_in_the_stated_order():
  assert [m for m, _ in _modules() if _layer(m) is None] == ['tff_med']
  order = ['tff_med.data.csv_tables', 'tff_med.secure_agg.masking',
           'tff_med.mechanisms.record_dp', 'tff_med.training', 'tff_med.grid',
           'experiments.train']
  assert [_layer(m) for m in order] == sorted(_layer(m) for m in order)
  assert len({_layer(m) for m in order}) == len(order)

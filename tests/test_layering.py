"""The package's import graph has no cycles: between modules, and between top-level packages
(si_jax.evaluation never imports si_jax.optimization back, tasks never imports acquisition...),
counting imports inside functions too. A cycle means two concepts leaned on each other; fold the
shared piece into the layer below (as layout.py, Task.majority and optimizers.py were)."""

import ast
import pathlib

import si_jax
from tests import helpers

ROOT = pathlib.Path(si_jax.__file__).parent


def _graph() -> dict[str, set[str]]:
  modules = {'.'.join(('si_jax',) + p.relative_to(ROOT).with_suffix('').parts).removesuffix(
      '.__init__'): p for p in ROOT.rglob('*.py')}
  edges = {m: set() for m in modules}
  for module, path in modules.items():
    for node in ast.walk(helpers.parse_python(path)):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('si_jax'):
        for alias in node.names:
          sub = f'{node.module}.{alias.name}'
          edges[module].add(sub if sub in modules else node.module)
      elif isinstance(node, ast.Import):
        edges[module].update(a.name for a in node.names if a.name.startswith('si_jax.'))
    edges[module].discard(module)
  return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
  """One cycle of the graph (a list of nodes), or None."""
  state, path = {}, []
  def visit(node):
    state[node] = 'open'
    path.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == 'open':
        return path[path.index(nxt):] + [nxt]
      if nxt not in state and (found := visit(nxt)):
        return found
    state[node] = 'done'
    path.pop()
    return None
  for node in sorted(edges):
    if node not in state and (found := visit(node)):
      return found
  return None


def _package(module: str) -> str:
  return '.'.join(module.split('.')[:2])


def test_no_module_imports_itself_back():
  assert _cycle(_graph()) is None


def test_no_two_packages_import_each_other():
  packages: dict[str, set[str]] = {}
  for module, targets in _graph().items():
    packages.setdefault(_package(module), set()).update(
        _package(t) for t in targets if _package(t) != _package(module))
  assert _cycle(packages) is None


def test_the_cycle_finder_finds_a_cycle():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None

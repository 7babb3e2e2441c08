"""Every script under experiments/ runs as its docstring says, from the repository root."""

import ast
import os
import pathlib
import subprocess
import sys

from tests import helpers

ROOT = pathlib.Path(__file__).resolve().parent.parent
# A script runs as a module (`if __name__ == '__main__'`); helpers such as experiments/report.py
# are imported by scripts and documented as libraries.
SCRIPTS = sorted(p for p in (ROOT / 'experiments').rglob('*.py')
                 if "if __name__ == '__main__'" in p.read_text())


def _module(path: pathlib.Path) -> str:
  return '.'.join(path.relative_to(ROOT).with_suffix('').parts)


def test_each_script_documents_its_module_command():
  assert len(SCRIPTS) >= 9, SCRIPTS
  for path in SCRIPTS:
    doc = ast.get_docstring(helpers.parse_python(path)) or ''
    assert f'python -m {_module(path)}' in doc, f'{path}: document `python -m {_module(path)}`'


def test_each_script_imports_and_parses_its_flags():
  """`python -m <module> --help` in a fresh interpreter (as a user runs it): the module and its
  imports load, its flags parse, and absl prints the usage (the docstring) without running."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  runs = {path: subprocess.Popen([sys.executable, '-m', _module(path), '--help'], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for path in SCRIPTS}
  for path, proc in runs.items():
    out, _ = proc.communicate(timeout=300)
    first_line = ast.get_docstring(helpers.parse_python(path)).splitlines()[0]
    assert 'Traceback' not in out and first_line in out, f'{path}:\n{out[-2000:]}'

"""Every script under experiments/ runs as its docstring says, from the repository root, and
every command a document shows names only flags and config keys that exist."""

import ast
import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

from si_jax import main as si_main
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


@pytest.fixture(scope='module')
def script_help():
  """{script path: its `python -m <module> --helpfull` output}, run in fresh interpreters."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  runs = {path: subprocess.Popen([sys.executable, '-m', _module(path), '--helpfull'], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for path in SCRIPTS}
  return {path: proc.communicate(timeout=300)[0] for path, proc in runs.items()}


def test_each_script_imports_and_parses_its_flags(script_help):
  """`python -m <module> --helpfull` in a fresh interpreter (as a user runs it): the module and
  its imports load, its flags parse, and absl prints the usage (the docstring) without running."""
  for path, out in script_help.items():
    first_line = ast.get_docstring(helpers.parse_python(path)).splitlines()[0]
    assert 'Traceback' not in out and first_line in out, f'{path}:\n{out[-2000:]}'


def _documented_commands():
  """(file, module, rest of the line) of every `python -m <module> ...` in the docs and code,
  with backslash-continued lines joined."""
  for path in sorted(ROOT.rglob('*')):
    if path.suffix not in ('.md', '.py', '.ipynb') or '.git' in path.parts:
      continue
    text = path.read_text(errors='ignore').replace('\\\n', ' ')
    for match in re.finditer(r'python -m ([\w.]+)([^\n`"]*)', text):
      yield path.relative_to(ROOT), match.group(1), match.group(2)


def _stale_config_keys(config_name: str, rest: str) -> list[str]:
  """The `--config.<key>=` overrides in `rest` that configs/<config_name>.py does not have."""
  config = importlib.import_module(f'configs.{config_name}').get_config()
  stale = []
  for key in re.findall(r'--config\.([\w.]+)=', rest):
    node = config
    for part in key.split('.'):
      if not hasattr(node, 'keys') or part not in node.keys():  # A key whose value is None exists.
        stale.append(f'--config.{key} (configs/{config_name}.py)')
        break
      node = node[part]
  return stale


def test_documented_commands_use_existing_flags(script_help):
  """A renamed or removed flag leaves every README and docstring that shows it broken; so does a
  `--config.<key>` override of a key the config (the command's --config, or the module's
  default) no longer has."""
  flags, default_config = {}, {'si_jax.main': pathlib.Path(si_main._DEFAULT_CONFIG).stem}
  for path, out in script_help.items():
    flags[_module(path)] = set(re.findall(r'^\s+--(?:\[no\])?([\w.]+)', out, re.M))
    default = re.search(r'--config:.*\n\s+\(default: \'.*configs/(\w+)\.py\'\)', out)
    if default:
      default_config[_module(path)] = default.group(1)
  stale, checked = [], 0
  for where, module, rest in _documented_commands():
    for flag in re.findall(r'(?<![\w-])--([\w.]+)', rest) if module in flags else []:
      known = (flag in flags[module] or (flag.startswith('no') and flag[2:] in flags[module])
               or (flag.startswith('config.') and module in default_config))
      stale += [] if known else [f'{where}: python -m {module} --{flag}']
      checked += 1
    config_file = re.search(r'--config=configs/(\w+)\.py', rest)
    config_name = config_file.group(1) if config_file else default_config.get(module)
    if config_name:
      stale += [f'{where}: python -m {module} {key}'
                for key in _stale_config_keys(config_name, rest)]
      checked += rest.count('--config.')
  assert checked > 50, f'only {checked} documented flags found: fix the command pattern'
  assert not stale, '\n'.join(stale)

"""colabs/quickstart.ipynb runs top to bottom, as plain Python (no Jupyter needed).

The notebook runs in a subprocess on one CPU device: conftest.py's 8 fake devices would split the
configs' fsdp=-1 meshes eight ways and make the demo slow.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, 'colabs', 'quickstart.ipynb')
TIMEOUT_S = 600  # The notebook takes about a minute on a 2-core CPU.

# Runs each code cell in order in one namespace; IPython magics and shell lines are skipped.
_RUNNER = """
import json, sys
ns = {'__name__': '__main__'}
for i, cell in enumerate(json.load(open(sys.argv[1]))['cells']):
  if cell['cell_type'] == 'code':
    lines = ''.join(cell['source']).split('\\n')
    source = '\\n'.join(l for l in lines if not l.lstrip().startswith(('%', '!')))
    exec(compile(source, f'<cell {i}>', 'exec'), ns)
print('NOTEBOOK OK')
"""


def load_notebook():
  with open(NOTEBOOK) as f:
    return json.load(f)


def test_notebook_is_saved_without_outputs():
  nb = load_notebook()
  code = [c for c in nb['cells'] if c['cell_type'] == 'code']
  assert code and all(not c['outputs'] and c['execution_count'] is None for c in code)
  sources = ''.join(''.join(c['source']) for c in code)
  assert 'self_train_arithmetic' in sources  # The notebook runs the (shrunken) main job.


def test_notebook_runs_top_to_bottom(tmp_path):
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu', TMPDIR=str(tmp_path))
  proc = subprocess.run([sys.executable, '-c', _RUNNER, NOTEBOOK], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  out = proc.stdout
  assert 'NOTEBOOK OK' in out
  assert "'exact_match'" in out  # The SFT demo's result.
  assert 'round_1_accuracy' in out  # The rejection-sampling round.
  assert 'loss.png' in out
  assert list(tmp_path.glob('si_jax_quickstart_*/loss.png'))  # The notebook's temp dir.

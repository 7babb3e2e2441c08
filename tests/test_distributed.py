"""Multi-process training: 2 CPU processes joined by jax.distributed take the same sharded SFT and
GRPO steps as 1 process with the same 4 devices (tests/distributed_steps.py)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'distributed_steps.py')


def _launch(process_id: int, num_processes: int, devices_per_process: int, port: int):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices_per_process}'}
  return subprocess.Popen([sys.executable, SCRIPT, str(process_id), str(num_processes), str(port)],
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_take_the_same_steps_as_one():
  alone = _launch(0, 1, 4, 0)
  outputs = [alone.communicate(timeout=900)]
  port = _free_port()
  workers = [_launch(i, 2, 2, port) for i in range(2)]  # After it: fewer processes per core.
  outputs += [p.communicate(timeout=900) for p in workers]
  for p, (_, err) in zip([alone] + workers, outputs):
    assert p.returncode == 0, err[-3000:]
  one, two = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs[:2])  # After gloo's logs.
  assert (one['devices'], one['processes'], two['devices'], two['processes']) == (4, 1, 4, 2)
  for name in ('sft', 'grpo'):
    # Cross-process all-reduces (gloo) may sum in another order: equal up to float rounding.
    np.testing.assert_allclose(two[name]['losses'], one[name]['losses'], rtol=1e-5)
    np.testing.assert_allclose(two[name]['param_norms'], one[name]['param_norms'], rtol=1e-5)
  assert one['sft']['losses'][1] < one['sft']['losses'][0]  # The steps really trained.
  assert not np.allclose(one['grpo']['param_norms'], one['sft']['param_norms'])

"""Loading a Hugging Face checkpoint: REF-25M saved as HF safetensors, load time and peak RSS.

  python -m experiments.benchmarks.hf_load

Saves REF-25M (BENCHMARKS.md, random init, seed 0) with `si_jax.models.hf.save` in float32 and
bfloat16, then loads each in a fresh interpreter onto a mesh over every local device (on CPU: 1
and 8 fake devices)
(`hf.load_params`, params born sharded) and reports the wall time of the load (config, abstract
model, reading and placing the tensors) and the peak RSS it adds. The file is memory-mapped and
each device's shard is cut from the map, so the host holds no extra copy of a tensor: on CPU, where
device buffers are host memory, the floor is twice the file (the buffers + the mapped pages,
which the kernel may reclaim).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_CHILD = flags.DEFINE_string('child', '', 'Internal: load this directory and print JSON.')


def _status_mb(key: str) -> float:
  """VmRSS (resident now) or VmHWM (its peak) of this process, from /proc (Linux)."""
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith(key + ':'):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f'{key} is not in /proc/self/status: this benchmark needs Linux')


def _load(path: str) -> dict:
  """Runs in the child: one load, timed, with the RSS it cost."""
  import jax  # pylint: disable=g-import-not-at-top
  from si_jax import models, sharding  # pylint: disable=g-import-not-at-top
  from si_jax.models import hf  # pylint: disable=g-import-not-at-top
  cfg = hf.load_config(path)  # In the checkpoint's dtype.
  mesh = sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1})  # Starts the backend.
  _, abstract = models.abstract_model(cfg)
  shardings = sharding.named_shardings(models.logical_axes(cfg), abstract, mesh)
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # Resets VmHWM: the peak below is the load's, not the imports'.
  before = _status_mb('VmRSS')
  start = time.perf_counter()
  params = hf.load_params(path, cfg, shardings)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  return {'seconds': seconds, 'peak_above_start_mb': _status_mb('VmHWM') - before,
          'params': models.param_count(params), 'devices': len(jax.devices())}


def main(_):
  if _CHILD.value:
    print(json.dumps(_load(_CHILD.value)))
    return
  import jax  # pylint: disable=g-import-not-at-top
  from configs import base  # pylint: disable=g-import-not-at-top
  from si_jax import models  # pylint: disable=g-import-not-at-top
  from si_jax.models import hf  # pylint: disable=g-import-not-at-top
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for dtype in ('float32', 'bfloat16'):
      cfg = models.TransformerConfig.from_config_dict(base.get_config().model)
      cfg = hf.config_from_hf(hf.hf_config(cfg), param_dtype=dtype)
      _, params = models.build(cfg, jax.random.PRNGKey(0))
      path = os.path.join(tmp, dtype)
      hf.save(path, cfg, params)
      size_mb = os.path.getsize(os.path.join(path, 'model.safetensors')) / 2**20
      for devices in (1, 8):  # 8: fake CPU devices, an FSDP-sharded load.
        env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
        out = subprocess.run([sys.executable, '-m', 'experiments.benchmarks.hf_load',
                              f'--child={path}'], capture_output=True, text=True, check=True,
                             env=env if jax.default_backend() == 'cpu' else None)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((dtype, size_mb, result))
  print('| dtype | params | file MB | devices | load s | peak RSS above the start MB |')
  print('| --- | --- | --- | --- | --- | --- |')
  for dtype, size_mb, r in rows:
    print(f"| {dtype} | {r['params'] / 1e6:.1f}M | {size_mb:.0f} | {r['devices']} | "
          f"{r['seconds']:.2f} | {r['peak_above_start_mb']:.0f} |")


if __name__ == '__main__':
  app.run(main)

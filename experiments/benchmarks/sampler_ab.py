"""The SAMPLE workload, this tree's sampler vs an older commit's, in one process, interleaved.

  python -m experiments.benchmarks.sampler_ab --rev=49d13d0 [--batch_sizes=1,16,64] [--repeats=5]

On a machine whose cores others share, absolute times swing with the load; timing old and new
alternately in the same process, on the same params, keeps the ratio meaningful. The old
`si_jax` is read from git into a temporary directory and imported as `si_jax_rev`. Also checks
that both give the same greedy tokens and reports the largest log-prob difference.
"""

import importlib
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from configs import base
from si_jax import models, sampling

_REV = flags.DEFINE_string('rev', 'main', 'Git revision of the sampler to compare against.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '16', '64'], 'Batch sizes.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs of each sampler per batch size.')
PROMPT, NEW = 32, 64


def import_revision(rev: str, name: str = 'si_jax_rev'):
  """`si_jax` as of `rev`, importable as `name` (its own absolute imports renamed)."""
  root = pathlib.Path(tempfile.mkdtemp())
  archive = subprocess.run(['git', 'archive', rev, 'si_jax'], check=True, capture_output=True)
  subprocess.run(['tar', '-x', '-C', str(root)], input=archive.stdout, check=True)
  (root / 'si_jax').rename(root / name)
  for path in (root / name).rglob('*.py'):
    path.write_text(re.sub(r'\bsi_jax\b', name, path.read_text()))
  sys.path.insert(0, str(root))
  return importlib.import_module(f'{name}.models'), importlib.import_module(f'{name}.sampling')


def main(_):
  old_models, old_sampling = import_revision(_REV.value)
  model_config = base.get_config().model
  cfg = models.TransformerConfig.from_config_dict(model_config)
  model, params = models.build(cfg, jax.random.PRNGKey(0))
  old_model, _ = old_models.build(old_models.TransformerConfig.from_config_dict(model_config),
                                  jax.random.PRNGKey(0))  # Same param layout: `params` serve both.
  samplers = {_REV.value: old_sampling.Sampler(old_model), 'this tree': sampling.Sampler(model)}
  print(f'| B | greedy tokens equal | max logprob diff | {_REV.value} tok/s | this tree tok/s '
        f'| time ratio (new / old) |')
  print('| --- | --- | --- | --- | --- | --- |')
  for b in map(int, _BATCH_SIZES.value):
    prompts = np.random.default_rng(b).integers(4, cfg.vocab_size, (b, PROMPT)).tolist()
    run = {k: (lambda s=s: s.sample(params, prompts, max_new_tokens=NEW, eos_id=-1))
           for k, s in samplers.items()}
    (old, new) = [f() for f in run.values()]  # Also the compile.
    times = {k: [] for k in run}
    for _ in range(_REPEATS.value):
      for k, f in run.items():
        start = time.perf_counter()
        f()
        times[k].append(time.perf_counter() - start)
    med = [statistics.median(t) for t in times.values()]
    print(f'| {b} | {np.array_equal(old.tokens, new.tokens)} '
          f'| {np.abs(old.logprobs - new.logprobs).max():.1e} | {b * NEW / med[0]:,.0f} '
          f'| {b * NEW / med[1]:,.0f} | {med[1] / med[0]:.2f} |', flush=True)


if __name__ == '__main__':
  app.run(main)

"""TRAIN-STEP benchmark (shared/BENCHMARKS.md): SFT step time, tokens/s and MFU.

  python -m experiments.benchmarks.train_step                # REF-25M, batch 16 x 96
  python -m experiments.benchmarks.train_step --grad_accum_steps=1   # one 16-row pass
  python -m experiments.benchmarks.train_step --model=demo   # the SFT demo's model, batch 64 x 20

Reports the median of timed steps after warm-up; MFU = 6 * params * tokens / time / peak, with
the peak measured here by a jitted f32 matmul (STACK-NOTES: ~137 GFLOP/s on the 2-core CPU).
"""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import base, sft_reverse
from si_jax import models, optimizers, sharding, train_state
from si_jax.optimization import sft, train_step

_MODEL = flags.DEFINE_enum('model', 'ref25m', ['ref25m', 'demo'], 'Which model to time.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps.')
# Also gro_step.py's flag (it imports this module).
GRAD_ACCUM = flags.DEFINE_integer('grad_accum_steps', 0, 'Microbatches of the timed update (1: '
                                  'one pass; 0: microbatches of MICROBATCH_ROWS rows).')
UNROLL = flags.DEFINE_integer('microbatches_per_iteration', 0, 'Microbatches per iteration of '
                              'the accumulation loop (0: train_step.microbatches_per_iteration).')
# On the 2-core CPU a REF-25M step runs fastest on 4-row (384-token) microbatches, whose
# activations stay in cache: 4 of TRAIN-STEP's 16 rows, 32 of GRO-STEP's 128 (README).
MICROBATCH_ROWS = 4


def grad_accum_steps(rows: int) -> int:
  """--grad_accum_steps, or as many microbatches as MICROBATCH_ROWS-row slices of `rows`."""
  return GRAD_ACCUM.value or max(1, rows // MICROBATCH_ROWS)


def unroll() -> int | None:
  """--microbatches_per_iteration, or None for make_train_step's default."""
  return UNROLL.value or None


def matmul_peak_flops(n: int = 2048, reps: int = 5) -> float:
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n ** 3 / min(times)


def main(_):
  if _MODEL.value == 'ref25m':
    config, (b, t) = base.get_config(), (16, 96)
  else:
    config = sft_reverse.get_config()
    b, t = config.train.batch_size, config.data.seq_len
  model_cfg = models.TransformerConfig.from_config_dict(config.model)
  mesh = sharding.make_mesh({'fsdp': -1})
  tx, schedule = optimizers.make_optimizer(config.optimizer, 1000)
  model, state, shardings = train_state.create(model_cfg, tx, mesh, seed=0)
  accum = grad_accum_steps(b)
  step = train_step.jit_train_step(train_step.make_train_step(
      functools.partial(sft.sft_loss, model), tx, schedule, accum, unroll()), shardings, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({
      'tokens': rng.integers(0, model_cfg.vocab_size, (b, t + 1)).astype(np.int32),
      'loss_mask': np.ones((b, t + 1), np.int32)}, mesh)
  for _ in range(2):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  n_params = models.param_count(state.params)
  median = statistics.median(times)
  tokens = b * t
  peak = matmul_peak_flops()
  mfu = 6 * n_params * tokens / median / peak
  print('| model | params | batch | microbatches | median step | tokens/s | MFU (6*N*D) '
        '| matmul peak |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  print(f'| {_MODEL.value} | {n_params:,} | {b}x{t} | {accum} | {median * 1e3:.1f} ms '
        f'| {tokens / median:,.0f} '
        f'| {mfu:.1%} | {peak / 1e9:.0f} GFLOP/s |')


if __name__ == '__main__':
  app.run(main)

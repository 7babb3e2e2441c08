"""GRO-STEP benchmark (shared/BENCHMARKS.md): one GRPO iteration on REF-25M.

  python -m experiments.benchmarks.gro_step [--repeats=3] [--grad_accum_steps=32]
      [--microbatches_per_iteration=2]

16 prompts x a group of 8 samples, 32 prompt tokens, exactly 64 completion tokens, a frozen
reference copy: generation + reference scoring + one optimizer step. Reports samples/s, the time
split, and the update's model FLOP utilisation (6 * params * tokens / time / matmul peak).
The update runs its 128 rows as `grad_accum_steps` microbatches (config.optimizer's knob), by
default 32 of 4 rows: on a CPU, 4-row microbatches keep the activations in cache, and two of
them per loop iteration keep both cores busy (see experiments/benchmarks/README.md).
"""

import functools
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from configs import base
from experiments.benchmarks.train_step import grad_accum_steps, matmul_peak_flops, unroll
from si_jax import layout, models, optimizers, sampling, sharding, train_state
from si_jax.optimization import grpo, train_step

_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed iterations (median reported).')
PROMPTS, GROUP, PROMPT_LEN, NEW = 16, 8, 32, 64


def main(_):
  config = base.get_config()
  cfg = models.TransformerConfig.from_config_dict(config.model)
  mesh = sharding.make_mesh({'fsdp': -1})
  tx, schedule = optimizers.make_optimizer(config.optimizer, 100)
  model, state, shardings = train_state.create(cfg, tx, mesh, seed=0)
  reference = jax.tree.map(lambda x: x.copy(), state.params)
  grpo_cfg = grpo.GRPOConfig(beta=0.04, max_completion_len=NEW)
  accum = grad_accum_steps(PROMPTS * GROUP)
  step = train_step.jit_train_step(train_step.make_train_step(
      functools.partial(grpo.grpo_loss, model, cfg=grpo_cfg), tx, schedule, accum, unroll()),
      shardings, mesh)
  sampler = sampling.Sampler(model, mesh)
  rng = np.random.default_rng(0)
  prompts = rng.integers(4, cfg.vocab_size, (PROMPTS, PROMPT_LEN)).tolist()
  prompt, prompt_mask = layout.left_pad(prompts, PROMPT_LEN)
  rows = PROMPTS * GROUP

  def iteration(state):
    times = {}
    t = time.perf_counter()
    out = sampler.sample(state.params, prompts, max_new_tokens=NEW, n=GROUP, eos_id=-1,
                         strategy=sampling.Temperature(1.0), seed=int(rng.integers(1 << 30)))
    times['generate'] = time.perf_counter() - t
    batch = {'prompt': np.repeat(prompt, GROUP, 0), 'prompt_mask': np.repeat(prompt_mask, GROUP, 0),
             'completion': out.tokens, 'completion_mask': np.ones((rows, NEW), bool),
             'advantages': rng.normal(size=rows).astype(np.float32)}
    t = time.perf_counter()
    batch['ref_logprobs'] = np.asarray(sampling.score_tokens(
        model, reference, batch['prompt'], batch['prompt_mask'], batch['completion'],
        batch['completion_mask'])[0])
    times['reference'] = time.perf_counter() - t
    t = time.perf_counter()
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    jax.block_until_ready(metrics)
    times['update'] = time.perf_counter() - t
    return state, times

  peak = matmul_peak_flops()  # Measured before and after: the higher (a lower MFU) is kept.
  state, _ = iteration(state)  # compile
  runs = []
  for _ in range(_REPEATS.value):
    state, times = iteration(state)
    runs.append(times)
  med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
  total = sum(med.values())
  n_params = models.param_count(state.params)
  update_tokens = rows * (PROMPT_LEN + NEW)
  peak = max(peak, matmul_peak_flops())
  flops = 6 * n_params * update_tokens / med['update']
  print(f'GRO-STEP on REF-25M ({n_params:,} params), {PROMPTS} prompts x {GROUP} samples, '
        f'{PROMPT_LEN}+{NEW} tokens, update in {accum} microbatches, '
        f'{jax.devices()[0].platform}')
  print('| samples/s | iteration | generate | reference | update | update GFLOP/s | update MFU |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  share = lambda k: f'{med[k]:.2f} s ({med[k] / total:.0%})'
  print(f'| {rows / total:.1f} | {total:.2f} s | {share("generate")} | {share("reference")} '
        f'| {share("update")} | {flops / 1e9:.0f} | {flops / peak:.0%} of {peak / 1e9:.0f} |')


if __name__ == '__main__':
  app.run(main)

"""Ragged GRPO rollouts: the static sampler vs the paged, continuously batched one (issue 17).

  python -m experiments.benchmarks.ragged_rollout [--configs=32x4,64x1,64x4,64x16,128x4]
      [--repeats=2] [--prompts=16] [--nosame_width]

REF-25M, 16 prompts of 32 random tokens, a group of G = 8 samples each (temperature 1), at most
64 new tokens. Completion lengths are mixed: row r ends with eos at exactly L_r tokens, L_r drawn
once (seeded) uniformly from [8, 64]. Both samplers derive the same per-(row, step) random keys,
so the `StopAt` strategy can force eos at row r's step L_r - 1 in both: they do identical useful
work (sum of L_r tokens) and must return identical tokens. The machine's cores are shared, so
the samplers run interleaved: a warm-up round, then `repeats` rounds each timing every sampler
once. Reports useful tokens/s (medians), time relative to static, the paged decoder's steps and
slot utilisation, and the load average (`os.getloadavg`) over the rounds. A second table times both
samplers on the same rows per step with no early stop: what paging costs by itself.
"""

import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import base
from si_jax import models, sampling
from si_jax.sampling import paged, sampler as sampler_lib, strategies

_CONFIGS = flags.DEFINE_list('configs', ['32x4', '64x1', '64x4', '64x16', '128x4'],
                            'Paged sampler settings, SLOTSxCHUNK (chunk: decode steps per host '
                            'round).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed rounds (median reported).')
_PAGE_SIZE = flags.DEFINE_integer('page_size', 16, 'Tokens per page.')
_PROMPTS = flags.DEFINE_integer('prompts', 16, 'Prompts per rollout (16 in the issue).')
_SAME_WIDTH = flags.DEFINE_bool('same_width', True, 'Also time both samplers on the same rows '
                                'per step (S rows, no early stop): the cost of paging alone.')
GROUP, PROMPT_LEN, MAX_NEW, MIN_NEW, EOS, SEED = 8, 32, 64, 8, 3, 0


@dataclasses.dataclass(frozen=True)
class StopAt(strategies.Strategy):
  """Temperature sampling that never draws eos by chance and emits it exactly when a row's
  step key is one of `stop_keys`: per-row lengths any sampler with `row_keys_of` keys repeats."""
  temperature: float = 1.0
  eos_id: int = EOS
  stop_keys: tuple[tuple[int, int], ...] = ()

  def sample(self, logits_BxV, rngs_B):
    tokens, logp = super().sample(logits_BxV.at[:, self.eos_id].set(-jnp.inf), rngs_B)
    keys = jnp.asarray(self.stop_keys, jnp.uint32)
    hit = jnp.any(jnp.all(rngs_B[:, None, :] == keys[None], axis=-1), axis=-1)
    return jnp.where(hit, self.eos_id, tokens), jnp.where(hit, 0.0, logp)


def stop_at(lengths_R) -> StopAt:
  """The strategy ending row r (prompt r // GROUP, sample r % GROUP) after lengths_R[r] tokens."""
  rows = np.arange(len(lengths_R))
  keys = sampler_lib.row_keys_of(jnp.asarray(SEED + rows // GROUP), jnp.asarray(rows % GROUP))
  steps = jax.vmap(jax.random.fold_in)(keys, jnp.asarray(lengths_R - 1))
  return StopAt(stop_keys=tuple(map(tuple, np.asarray(steps).tolist())))


def _load() -> str:
  return f'{os.getloadavg()[0]:.1f}'


def _interleaved(runs: dict, repeats: int):
  """Times the runs in rounds (one of each per round) after a warm-up round. Returns {name:
  median seconds}, the load average after each round and {name: warm-up round's result}."""
  times, loads = {k: [] for k in runs}, [_load()]
  first = {k: run() for k, run in runs.items()}  # Compiles.
  for _ in range(repeats):
    for k, run in runs.items():
      start = time.perf_counter()
      run()
      times[k].append(time.perf_counter() - start)
    loads.append(_load())
  return {k: statistics.median(t) for k, t in times.items()}, loads, first


def same_width(model, params, slot_counts):
  """Per-step cost with no ragged work: S rows (S / G prompts), exactly MAX_NEW tokens each,
  static on S rows vs paged on S slots, interleaved run by run."""
  print('\n| rows = slots | static ms/step | paged ms/step | paged / static | load before -> '
        'after |')
  print('| --- | --- | --- | --- | --- |')
  for slots in slot_counts:
    prompts = np.random.default_rng(slots).integers(4, model.cfg.vocab_size,
                                                    (slots // GROUP, PROMPT_LEN)).tolist()
    kwargs = dict(max_new_tokens=MAX_NEW, n=GROUP, eos_id=-1)
    samplers = [sampling.Sampler(model),
                paged.PagedSampler(model, slots=slots, page_size=_PAGE_SIZE.value, chunk=MAX_NEW)]
    med, loads, _ = _interleaved({i: (lambda s=s: s.sample(params, prompts, **kwargs))
                                  for i, s in enumerate(samplers)}, _REPEATS.value)
    static_t, paged_t = med[0] / MAX_NEW * 1e3, med[1] / MAX_NEW * 1e3
    print(f'| {slots} | {static_t:.1f} | {paged_t:.1f} | {paged_t / static_t:.2f} | {loads[0]} -> '
          f'{loads[-1]} |', flush=True)


def main(_):
  cfg = models.TransformerConfig.from_config_dict(base.get_config().model)
  model, params = models.build(cfg, jax.random.PRNGKey(0))
  rng = np.random.default_rng(SEED)
  num_prompts = _PROMPTS.value
  prompts = rng.integers(4, cfg.vocab_size, (num_prompts, PROMPT_LEN)).tolist()
  lengths = rng.integers(MIN_NEW, MAX_NEW + 1, num_prompts * GROUP)
  strategy = stop_at(lengths)
  useful = int(lengths.sum())
  kwargs = dict(max_new_tokens=MAX_NEW, n=GROUP, seed=SEED, eos_id=EOS, strategy=strategy)
  static = sampling.Sampler(model)
  reference = static.sample(params, prompts, **kwargs)
  assert (reference.lengths == lengths).all(), 'the forced lengths did not take'
  print(f'REF-25M, {num_prompts} prompts x G={GROUP}, {PROMPT_LEN} prompt tokens, completions '
        f'{lengths.min()}..{lengths.max()} (mean {lengths.mean():.1f}): {useful} useful tokens; '
        f'static: {num_prompts * GROUP} rows x {lengths.max()} steps = '
        f'{useful / (num_prompts * GROUP * lengths.max()):.0%} of row-steps useful')
  samplers = {'static': static}
  for config in _CONFIGS.value:
    slots, chunk = map(int, config.split('x'))
    samplers[config] = paged.PagedSampler(model, slots=slots, page_size=_PAGE_SIZE.value,
                                          chunk=chunk)
  med, loads, outs = _interleaved({k: (lambda s=s: s.sample(params, prompts, **kwargs))
                                   for k, s in samplers.items()}, _REPEATS.value)
  for k, out in outs.items():
    assert (out.tokens == reference.tokens).all(), f'{k}: tokens differ from static'
  print(f'load average over the rounds: {" -> ".join(loads)}')
  print('| sampler | slots | chunk | tokens/s | s/rollout | time / static | decode steps '
        '| useful slot-steps | host rounds |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for k, sampler in samplers.items():
    if k == 'static':
      name, slots, chunk, steps, rounds = 'static', num_prompts * GROUP, '-', lengths.max(), 1
    else:  # The stats of its last run: the same work every run.
      name, slots, chunk = 'paged', sampler.slots, sampler.chunk
      steps, rounds = sampler.stats.decode_steps, sampler.stats.chunks
    print(f'| {name} | {slots} | {chunk} | {useful / med[k]:,.0f} | {med[k]:.2f} | '
          f'{med[k] / med["static"]:.2f} | {steps} | {useful / (steps * slots):.0%} | {rounds} |')
  if _SAME_WIDTH.value:
    same_width(model, params, sorted({int(c.split('x')[0]) for c in _CONFIGS.value}))


if __name__ == '__main__':
  app.run(main)

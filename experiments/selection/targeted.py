"""LESS and the IFD filter, measured: does each keep what its paper says it keeps?

  python -m experiments.selection.targeted --workdir=/tmp/si_jax/selection_targeted

LESS (Xia et al. 2024). Per seed, a tiny model is warmed up with Adam on two tasks mixed, over
the same prompts' letters: reversal ('abc>' -> 'cba') and spelling ('abc=' -> '012'), with a
decaying learning rate and `checkpoints` checkpoints. A fresh pool holds `pool_size` examples of
each task; the target is `target_size` reversal examples (a small validation set). Each method
keeps `budget` = pool_size examples; reported: the share of reversal among them (random: 1/2)
and the reversal loss on held-out examples after `sft_steps` Adam steps from the warmed-up model
on the selection (lower is better; all reversal is the best a selection can do).
  random          uniform draw;
  sgd_last        cosine of raw gradients to the target's mean one, last checkpoint;
  less_last       LESS at the last checkpoint only (Adam update directions);
  less            LESS over all checkpoints, weighted by their mean learning rates;
  reversal_only   (uses task labels) the reversal half of the pool: the ceiling.

IFD (Li et al. 2024). The warmed-up model scores a pool of reversal pairs of which
`corrupt_share` have the answer of another prompt (an instruction that does not lead to its
answer). Reported: the share of corrupted pairs that IFD >= 1 drops, of clean pairs it keeps,
and the corrupted share among the top `budget` by IFD with and without the filter.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from si_jax import layout, models, sharding, train_state
from si_jax.optimization import rounds, sft, train_step
from si_jax.selection import scores, selectors
from si_jax.tokenizers import Tokenizer

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/si_jax/selection_targeted', 'Outputs go here.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds (model, data, draws).')
_WARMUP = flags.DEFINE_integer('warmup_steps', 48, 'Adam steps on the two-task mixture.')
_CHECKPOINTS = flags.DEFINE_integer('checkpoints', 3, 'LESS checkpoints, evenly over warmup.')
_POOL = flags.DEFINE_integer('pool_size', 64, 'Pool examples per task.')
_TARGET = flags.DEFINE_integer('target_size', 32, 'Reversal examples in the target set.')
_DIM = flags.DEFINE_integer('dim', 1024, 'Random projection dimension of the gradients.')
_STEPS = flags.DEFINE_integer('sft_steps', 32, 'Fine-tune steps on each selection.')
_CORRUPT = flags.DEFINE_float('corrupt_share', 0.25, 'IFD pool: share of swapped answers.')

BATCH, SEQ_LEN, LR = 16, 16, 1e-2
METHODS = ('random', 'sgd_last', 'less_last', 'less', 'reversal_only')


def two_tasks(rng, n: int) -> list[dict]:
  """n reversal examples, then n spelling examples (each letter's index), 3-5 distinct letters."""
  words = [''.join(rng.choice(list('abcdefghij'), rng.integers(3, 6), replace=False))
           for _ in range(2 * n)]
  return ([{'prompt': w + '>', 'completion': w[::-1]} for w in words[:n]] +
          [{'prompt': w + '=', 'completion': ''.join(str(ord(c) - 97) for c in w)}
           for w in words[n:]])


def tiny_model() -> models.TransformerConfig:
  return models.TransformerConfig(
      vocab_size=32, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
      mlp_dim=128)


class Trainer:
  """Adam SFT steps on example lists (one compiled step for every run of a seed)."""

  def __init__(self, tokenizer, schedule, seed: int):
    self.mesh = sharding.make_mesh({}, jax.devices()[:1])
    self.tx = optax.adam(schedule)
    self.model, self.state, shardings = train_state.create(tiny_model(), self.tx, self.mesh,
                                                           seed=seed)
    self.step = train_step.jit_train_step(train_step.make_train_step(
        functools.partial(sft.sft_loss, self.model), self.tx, schedule), shardings, self.mesh)
    self.tokenizer, self.schedule = tokenizer, schedule

  def train(self, state, examples, num_steps: int, rng, checkpoint_every: int = 0):
    """(state, LESS checkpoints every `checkpoint_every` steps weighted by mean LR)."""
    checkpoints = []
    for i in range(num_steps):
      idx = rng.choice(len(examples), BATCH, replace=len(examples) < BATCH)
      batch = layout.sft_rows(self.tokenizer, [examples[j]['prompt'] for j in idx],
                              [examples[j]['completion'] for j in idx], SEQ_LEN)
      state, _ = self.step(state, sharding.shard_batch(batch, self.mesh))
      if checkpoint_every and (i + 1) % checkpoint_every == 0:
        eta = float(np.mean([self.schedule(t) for t in range(i + 1 - checkpoint_every, i + 1)]))
        checkpoints.append(scores.adam_checkpoint(state.params, state.opt_state, eta))
    return state, checkpoints

  def fresh_optimizer(self, params) -> train_state.TrainState:
    """Step 0 and a new Adam state on a copy of the params: every selection starts alike."""
    params = rounds.frozen_copy(params)
    return train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                  opt_state=self.tx.init(params), rng=jax.random.PRNGKey(0))


def select(method: str, pool, target, checkpoints, trainer, budget: int, rng) -> np.ndarray:
  kw = dict(model=trainer.model, tokenizer=trainer.tokenizer, target=target, dim=_DIM.value,
            batch_size=32)
  if method == 'random':
    return rng.choice(len(pool), budget, replace=False)
  if method == 'reversal_only':
    return np.arange(budget)
  if method == 'sgd_last':
    s = scores.compute('gradient_similarity', pool, params=checkpoints[-1].params, **kw)
  elif method == 'less_last':
    s = scores.compute('less', pool, checkpoints=checkpoints[-1:], **kw)
  elif method == 'less':
    s = scores.compute('less', pool, checkpoints=checkpoints, **kw)
  else:
    raise ValueError(f'unknown method {method!r}')
  return selectors.top_k(s, budget)


def run_seed(seed: int) -> dict:
  t0 = time.time()
  tokenizer = Tokenizer.train(['abcdefghij0123456789>='], 32)
  rng = np.random.default_rng(seed)
  warmup = _WARMUP.value
  schedule = optax.linear_schedule(LR, LR / 10, warmup)
  trainer = Trainer(tokenizer, schedule, seed)
  mixture = two_tasks(rng, 4 * _POOL.value)
  state, checkpoints = trainer.train(trainer.state, mixture, warmup, rng,
                                     checkpoint_every=warmup // _CHECKPOINTS.value)
  warm_params = checkpoints[-1].params
  pool = two_tasks(rng, _POOL.value)  # First half reversal.
  target = two_tasks(rng, _TARGET.value)[:_TARGET.value]
  held_out = two_tasks(rng, 64)[:64]
  score_kw = dict(model=trainer.model, tokenizer=tokenizer, batch_size=64)
  out = {'seed': seed, 'methods': {},
         'warm_reversal_nll': float(np.log(scores.compute(
             'perplexity', held_out, params=warm_params, **score_kw)).mean())}
  for method in METHODS:
    t = time.time()
    idx = select(method, pool, target, checkpoints, trainer, _POOL.value,
                 np.random.default_rng([seed, 1]))
    tuned, _ = trainer.train(trainer.fresh_optimizer(warm_params), [pool[i] for i in idx],
                             _STEPS.value, np.random.default_rng([seed, 2]))
    nll = np.log(scores.compute('perplexity', held_out, params=tuned.params, **score_kw))
    out['methods'][method] = {'precision': float(np.mean(idx < _POOL.value)),
                              'reversal_nll': float(nll.mean()),
                              'seconds': round(time.time() - t, 1)}
  out['ifd'] = ifd_filter(trainer.model, warm_params, tokenizer, seed)
  out['seconds'] = round(time.time() - t0, 1)
  print(json.dumps(out), flush=True)
  return out


def ifd_filter(model, params, tokenizer, seed: int) -> dict:
  rng = np.random.default_rng([seed, 3])
  pool = two_tasks(rng, 2 * _POOL.value)[:2 * _POOL.value]
  n_bad = int(round(len(pool) * _CORRUPT.value))
  answers = [ex['completion'] for ex in pool[:n_bad]]
  for i, ex in enumerate(pool[:n_bad]):  # Each takes the next one's answer: a derangement.
    ex['completion'] = answers[(i + 1) % n_bad]
  bad = np.arange(len(pool)) < n_bad
  ifd = scores.compute('ifd', pool, model=model, params=params, tokenizer=tokenizer,
                       batch_size=64)
  kept = ifd < 1.0
  budget = _POOL.value
  return {'bad_dropped': float(np.mean(~kept[bad])), 'clean_kept': float(np.mean(kept[~bad])),
          'bad_in_top_filtered': float(np.mean(bad[selectors.top_ifd(ifd, budget)])),
          'bad_in_top_unfiltered': float(np.mean(bad[selectors.top_ifd(ifd, budget, False)]))}


def _cell(values, scale: float = 1.0, digits: int = 1) -> str:
  v = np.asarray(values, np.float64) * scale
  spread = f' ± {v.std(ddof=1):.{digits}f}' if len(v) > 1 else ''
  return f'{v.mean():.{digits}f}{spread}'


def table(runs: list[dict]) -> str:
  lines = [f'LESS: mean ± std over {len(runs)} seeds; pool {_POOL.value} reversal + '
           f'{_POOL.value} spelling, target {_TARGET.value} reversal examples, each method keeps '
           f'{_POOL.value}, then {_STEPS.value} Adam steps from the warmed-up model.', '',
           '| method | reversal share of the selection (%) | held-out reversal NLL after '
           'fine-tuning |', '| --- | --- | --- |',
           f"| warmed-up model (no fine-tune) | - | "
           f"{_cell([r['warm_reversal_nll'] for r in runs], digits=3)} |"]
  for method in METHODS:
    m = [r['methods'][method] for r in runs]
    name = f'{method} (uses labels)' if method == 'reversal_only' else method
    lines.append(f"| {name} | {_cell([x['precision'] for x in m], 100)} | "
                 f"{_cell([x['reversal_nll'] for x in m], digits=3)} |")
  f = [r['ifd'] for r in runs]
  lines += ['', f'IFD filter: {int(_CORRUPT.value * 100)}% of {2 * _POOL.value} reversal pairs '
            'carry another prompt\'s answer.', '',
            '| corrupted dropped by IFD >= 1 (%) | clean kept (%) | corrupted in top '
            f'{_POOL.value} by IFD, filtered (%) | unfiltered (%) |', '| --- | --- | --- | --- |',
            f"| {_cell([x['bad_dropped'] for x in f], 100)} | "
            f"{_cell([x['clean_kept'] for x in f], 100)} | "
            f"{_cell([x['bad_in_top_filtered'] for x in f], 100)} | "
            f"{_cell([x['bad_in_top_unfiltered'] for x in f], 100)} |"]
  return '\n'.join(lines)


def main(argv):
  del argv
  start = time.time()
  os.makedirs(_WORKDIR.value, exist_ok=True)
  runs = [run_seed(int(s)) for s in _SEEDS.value]
  report = (table(runs) + f'\n\nWall time: {time.time() - start:.0f} s on '
            f'{jax.device_count()} {jax.devices()[0].platform} device(s).')
  print(report)
  with open(os.path.join(_WORKDIR.value, 'results.json'), 'w') as f:
    json.dump({'flags': {k: flags.FLAGS[k].value for k in (
        'seeds', 'warmup_steps', 'checkpoints', 'pool_size', 'target_size', 'dim', 'sft_steps',
        'corrupt_share')}, 'table': report, 'runs': runs}, f, indent=1)


if __name__ == '__main__':
  app.run(main)

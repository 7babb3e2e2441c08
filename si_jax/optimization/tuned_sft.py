"""SFT with its learning rate, schedule and stopping point chosen by validation loss.

This is the self-improvement loop's control arm. A gain over a control that merely took the same
steps at the loop's own learning rate says little: an under-trained base gains from any
annealing. The control here is the best model the labelled seed set alone buys for the same
step budget. Every candidate (learning rate x schedule) trains from the base on the seed set's
training split and is scored on its held-out split after each round's worth of steps. The
lowest validation loss over all candidates and stopping points wins. No benchmark is read.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from si_jax.evaluation import monitors
from si_jax.experiment import Experiment
from si_jax import optimizers
from si_jax.optimization import rounds
from si_jax.train_state import TrainState

# 'cosine' decays once over the whole budget; 'cosine_per_round' restarts (warmup, decay) every
# round's worth of steps, as the loop's arm may.
SCHEDULES = ('constant', 'cosine', 'cosine_per_round')


@dataclasses.dataclass(frozen=True)
class Candidate:
  learning_rate: float
  schedule: str  # One of SCHEDULES.


def candidates(learning_rates, schedules) -> list[Candidate]:
  """The sweep's grid; names the field when a schedule is unknown."""
  unknown = [s for s in schedules if s not in SCHEDULES]
  if unknown or not learning_rates or not schedules:
    raise ValueError(f'config.loop.control_arm: learning_rates {list(learning_rates)} and schedules '
                     f'{list(schedules)} must be non-empty; schedules from {SCHEDULES}')
  return [Candidate(float(lr), s) for lr, s in itertools.product(learning_rates, schedules)]


def optimizer_config(base: ml_collections.ConfigDict, candidate: Candidate,
                     round_steps: int) -> ml_collections.ConfigDict:
  """The `optimizer` section for one candidate (everything else as in `base`)."""
  cfg = ml_collections.ConfigDict(base.to_dict())
  cfg.learning_rate = candidate.learning_rate
  cfg.schedule = 'constant' if candidate.schedule == 'constant' else 'cosine'
  cfg.restart_every = round_steps if candidate.schedule == 'cosine_per_round' else 0
  return cfg


def sweep(exp: Experiment, init_params, train: tuple[list[str], list[str]],
          validation: tuple[list[str], list[str]], grid: list[Candidate], *, num_rounds: int,
          round_steps: int, batch_size: int, seed: int) -> tuple[Any, dict[str, Any]]:
  """Trains every candidate for num_rounds x round_steps steps from `init_params` on `train`;
  returns (the params with the lowest validation loss seen, a JSON-able report of the sweep).
  """
  best_loss, best_params, report = float('inf'), None, []
  for candidate in grid:
    cfg = optimizer_config(exp.config.optimizer, candidate, round_steps)
    tx, schedule = optimizers.make_optimizer(cfg, num_rounds * round_steps)
    state = jax.jit(lambda p, tx=tx: TrainState(  # A fresh optimizer on a copy of the base.
        step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
        rng=jax.random.PRNGKey(seed)), out_shardings=exp.shardings)(
            rounds.frozen_copy(init_params))
    step_fn = rounds.sft_step(exp, tx, schedule)
    losses = []
    for r in range(num_rounds):
      state, _ = rounds.train_sft(exp, step_fn, state, *train, num_steps=round_steps,
                                batch_size=batch_size, seed=seed * 37 + r, max_epochs=1e9)
      losses.append(float(monitors.nll_per_token(exp.model, state.params, exp.tokenizer,
                                                 *validation).mean()))
      if losses[-1] < best_loss:
        best_loss, best_params = losses[-1], rounds.frozen_copy(state.params)
    report.append({**dataclasses.asdict(candidate), 'validation_loss': losses,
                   'best_round': int(np.argmin(losses)) + 1})
  chosen = min(report, key=lambda c: min(c['validation_loss']))
  return best_params, {'candidates': report, 'chosen': {
      'learning_rate': chosen['learning_rate'], 'schedule': chosen['schedule'],
      'rounds': chosen['best_round'], 'validation_loss': best_loss}}


def control_arm(exp: Experiment, ckpt, init_params, train: tuple[list[str], list[str]],
                validation: tuple[list[str], list[str]], loop, seed: int):
  """The loop's control: (params, sweep report). Swept once per run from `init_params` for the
  loop's step budget (loop.control_arm's grid), checkpointed in `ckpt` at step 0, and restored
  from there on resume."""
  if ckpt.latest_step() is None:
    grid = candidates(loop.control_arm.learning_rates, loop.control_arm.schedules)
    params, report = sweep(exp, init_params, train, validation, grid, num_rounds=loop.num_rounds,
                           round_steps=loop.sft_steps, batch_size=loop.batch_size, seed=seed)
    ckpt.save(0, {'params': params}, report, force=True)
  else:
    params, _ = ckpt.restore_params(exp.abstract_state().params, exp.shardings.params, step=0)
  return params, ckpt.read_meta(0)

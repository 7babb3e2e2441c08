"""The loop controller (survey §6): evaluation results and monitor flags decide the next round.

A small policy, not a learner: after each round the loop hands it the round's tracked score, a
confidence per difficulty and the monitors' flags, and gets back what to do next. In a
label-free loop every input is label-free: the tracked score is accuracy on data the run already
paid labels for (the seed set's held-out slice), the per-level confidence is vote agreement on
the round's own problems, and the flags come from monitors built the same way. Every decision
carries a reason naming the numbers behind it and is kept in the state's history, so a run can
explain itself; the state is plain JSON and lives in checkpoint metadata, so it resumes too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from absl import logging

ACTIONS = ('continue', 'raise_difficulty', 'mix_real_data', 'rollback', 'stop')
MIX_REAL_FLAGS = ('collapse', 'reward_hacking')  # Monitors whose flag brings real data back.


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
  raise_at: float = 0.8  # Confidence at the current top difficulty that earns a harder level.
  patience: int = 3  # Rounds without improvement of the tracked score before stopping.
  min_delta: float = 0.0  # The tracked score must beat the best by more than this to improve.
  regression_tol: float = 0.05  # A drop below the best larger than this triggers a rollback.
  real_data_ratio: float = 0.5  # Mix ratio of real data once collapse or hacking shows.
  max_difficulty: int = 8  # The hardest level the curriculum may reach.

  def __post_init__(self):
    if self.patience < 1:
      raise ValueError(f'patience must be >= 1, got {self.patience}')
    if self.min_delta < 0 or self.regression_tol < 0:
      raise ValueError(f'min_delta and regression_tol must be >= 0, got {self.min_delta}, '
                       f'{self.regression_tol}')
    if not 0.0 <= self.real_data_ratio < 1.0:  # As DataStore.select's 'mix' policy requires.
      raise ValueError(f'real_data_ratio must be in [0, 1), got {self.real_data_ratio}')


@dataclasses.dataclass
class ControllerState:
  difficulty: int = 1  # Top level of the current mix.
  best_score: float | None = None  # None until the first round is scored.
  best_round: int | None = None  # The round whose checkpoint a rollback restores.
  rounds_since_best: int = 0
  mix_real: float = 0.0  # Real-data ratio of the training mix; stays on once switched on.
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> ControllerState:
    return cls(**{**d, 'history': [dict(h) for h in d.get('history', [])]})


@dataclasses.dataclass(frozen=True)
class Decision:
  action: str  # One of ACTIONS.
  reason: str  # Names the numbers that triggered the action.
  difficulty: int  # Top difficulty of the next round.
  mix_real: float  # Real-data ratio of the next round.
  rollback_to: int | None = None  # Round whose checkpoint to restore ('rollback' only).


def _flag_details(flag: dict) -> str:
  """The numbers a monitor reported with its flag, e.g. 'distinct=0.12, threshold=0.3'."""
  return ', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                   for k, v in flag.items() if k != 'flag')


def decide(state: ControllerState, round_idx: int, score: float,
           confidence_by_difficulty: dict[int, float], flags: dict[str, dict],
           cfg: ControllerConfig, noise: float = 0.0) -> tuple[Decision, ControllerState]:
  """The next round's decision and the updated state (a new object; `state` is untouched).

  `score` is the tracked score, comparable across rounds (e.g. accuracy on a fixed labelled
  validation slice); `confidence_by_difficulty` says how sure the model is per level (e.g. the
  share of problems its vote labelled); `noise` is the size of a fall from the best that noise
  alone explains (e.g. two standard errors of the paired change). The first rule that fires
  wins, most urgent first:
    1. rollback: score fell more than max(regression_tol, noise) below the best -> restore the
       best round;
    2. mix_real_data: the collapse or reward_hacking monitor flags -> real data back in the mix
       (at cfg.real_data_ratio);
    3. stop: no improvement above min_delta for `patience` rounds (a plateau);
    4. raise_difficulty: confidence at the current top difficulty >= raise_at, below the maximum;
  otherwise continue.
  """
  score = float(score)  # A numpy scalar would not survive the JSON round trip.
  if not math.isfinite(score):
    raise ValueError(f'round {round_idx}: tracked score must be finite, got {score}')
  best, best_round, since = state.best_score, state.best_round, state.rounds_since_best
  if best is None or score > best + cfg.min_delta:
    best, best_round, since = score, round_idx, 0
  else:
    since += 1
  difficulty, mix_real = state.difficulty, state.mix_real
  top_acc = confidence_by_difficulty.get(difficulty)
  raised = [name for name in MIX_REAL_FLAGS if flags.get(name, {}).get('flag')]

  rollback_to = None
  tolerance = max(cfg.regression_tol, noise)
  if best - score > tolerance:
    action, rollback_to = 'rollback', best_round
    reason = (f'score {score:.3f} is {best - score:.3f} below the best {best:.3f} (round '
              f'{best_round}), beyond tolerance {tolerance:.3f}: restore round {best_round}')
  elif raised:
    action, mix_real = 'mix_real_data', cfg.real_data_ratio
    details = '; '.join(f'{name} ({_flag_details(flags[name])})' for name in raised)
    reason = f'{details} flagged: mix real data back in at ratio {mix_real:.2f}'
  elif since >= cfg.patience:
    action = 'stop'
    reason = (f'plateau: score {score:.3f} has not beaten the best {best:.3f} (round '
              f'{best_round}) by more than {cfg.min_delta:.3f} for {since} rounds '
              f'(patience {cfg.patience})')
  elif top_acc is not None and top_acc >= cfg.raise_at and difficulty < cfg.max_difficulty:
    action, difficulty = 'raise_difficulty', difficulty + 1
    reason = (f'confidence {top_acc:.3f} at difficulty {difficulty - 1} >= {cfg.raise_at:.3f}: '
              f'raise to {difficulty}')
  else:
    action = 'continue'
    acc = 'n/a' if top_acc is None else f'{top_acc:.3f}'
    reason = (f'score {score:.3f} (best {best:.3f}, round {best_round}); confidence {acc} at '
              f'difficulty {difficulty} (raise at {cfg.raise_at:.3f}, max difficulty '
              f'{cfg.max_difficulty})')

  decision = Decision(action, reason, difficulty, mix_real, rollback_to)
  logging.info('controller round %d: %s (%s)', round_idx, action, reason)
  new_state = ControllerState(
      difficulty=difficulty, best_score=best, best_round=best_round, rounds_since_best=since,
      mix_real=mix_real,
      history=[*state.history, {'round': round_idx, 'score': score,
                                **dataclasses.asdict(decision)}])
  return decision, new_state

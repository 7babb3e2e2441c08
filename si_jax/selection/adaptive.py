"""A learnable selector: a linear scorer over standardized score features, trained by REINFORCE
from the learning progress of what it picked (a bandit over data; survey §3, adaptive selection).

Each round: `select` draws k examples without replacement from a Plackett-Luce policy
(softmax over w . z / temperature, z the standardized features); after training on them, the
measured progress of each pick (e.g. its loss drop, or the round's held-out gain repeated) goes to
`update`, which follows the exact Plackett-Luce score-function gradient with a moving baseline.
Pure numpy; the state is a small JSON-able dataclass that lives in checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass
class SelectorState:
  """Weights over the named features, the reward baseline and the update hyperparameters."""
  feature_names: list[str]
  weights: list[float]
  baseline: float = 0.0
  rounds: int = 0
  learning_rate: float = 0.1
  temperature: float = 1.0
  baseline_decay: float = 0.9

  @classmethod
  def init(cls, feature_names: Sequence[str], **hparams) -> SelectorState:
    return cls(list(feature_names), [0.0] * len(feature_names), **hparams)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> SelectorState:
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict())

  @classmethod
  def from_json(cls, s: str) -> SelectorState:
    return cls.from_dict(json.loads(s))


def standardize_features(features_NxF) -> np.ndarray:
  """Per-column z-scores over the candidate pool (constant columns become 0)."""
  x = np.asarray(features_NxF, np.float64)
  std = x.std(axis=0, keepdims=True)
  return (x - x.mean(axis=0, keepdims=True)) / np.where(std == 0, 1.0, std)


def logits(state: SelectorState, features_NxF) -> np.ndarray:
  z_NxF = standardize_features(features_NxF)
  return z_NxF @ np.asarray(state.weights) / state.temperature


def select(state: SelectorState, features_NxF, k: int, seed: int) -> np.ndarray:
  """k indices drawn without replacement from the Plackett-Luce policy (Gumbel top-k)."""
  s_N = logits(state, features_NxF)
  g_N = np.random.default_rng(seed).gumbel(size=s_N.shape)
  return np.argsort(-(s_N + g_N), kind='stable')[:k]


def update(state: SelectorState, features_NxF, selected: Sequence[int],
           progress) -> SelectorState:
  """One REINFORCE step; `progress` is per selected example (in pick order) or one scalar for
  the round. Returns the new state (the input is not modified)."""
  z_NxF = standardize_features(features_NxF)
  selected = [int(i) for i in selected]
  r_K = np.broadcast_to(np.asarray(progress, np.float64), (len(selected),))
  adv_K = r_K - state.baseline
  s_N = z_NxF @ np.asarray(state.weights) / state.temperature
  remaining = np.ones(len(s_N), bool)
  grad_F = np.zeros(z_NxF.shape[1])
  for i, adv in zip(selected, adv_K):
    # d/dw log softmax_i over the not-yet-picked items = (z_i - E_p[z]) / temperature.
    s = np.where(remaining, s_N, -np.inf)
    p_N = np.exp(s - s.max())
    p_N /= p_N.sum()
    grad_F += adv * (z_NxF[i] - p_N @ z_NxF) / state.temperature
    remaining[i] = False
  grad_F /= max(len(selected), 1)
  decay = state.baseline_decay
  return dataclasses.replace(
      state, weights=[float(w) for w in np.asarray(state.weights) + state.learning_rate * grad_F],
      baseline=float(decay * state.baseline + (1 - decay) * r_K.mean()),
      rounds=state.rounds + 1)

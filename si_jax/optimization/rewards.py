"""Reward functions: verifiable and heuristic (survey §4, Reward). Model-based ones: judge.py,
and the learned reward model in si_jax/models/reward_model.py.

A reward is a plain callable `fn(prompts, completions, **fields) -> np.ndarray [N]`, run on the
host between jitted steps. `fields` carries per-completion extras such as `answers` (reference
answers, for verifiable rewards). Completions of one prompt are consecutive (rows b*n .. b*n+n-1),
as the sampler returns them; group rewards take `group_size`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from si_jax.tasks import Problem, Task

RewardFn = Callable[..., np.ndarray]


def verifiable(task: Task) -> RewardFn:
  """The task's verifier against the reference answer in `answers` (never seen by the policy)."""
  def reward(prompts, completions, *, answers, **_):
    return np.asarray([task.verify(Problem(p, a, 0), c)
                       for p, a, c in zip(prompts, answers, completions)], np.float32)
  return reward


def majority_labels(task: Task, completions: Sequence[str], group_size: int):
  """Per group: (the most common extracted answer or None, its share of the group)."""
  if len(completions) % group_size:
    raise ValueError(f'{len(completions)} completions are not whole groups of {group_size}')
  votes = [task.majority(completions[g:g + group_size])
           for g in range(0, len(completions), group_size)]
  return [label for label, _ in votes], np.asarray([share for _, share in votes], np.float32)


def majority_vote(task: Task, group_size: int, min_share: float = 0.0) -> RewardFn:
  """Self-consistency as a pseudo-label (TTRL, LMSI): 1 for completions whose answer matches
  their group's majority answer, 0 otherwise (and 0 for all when the majority is weaker than
  min_share). No ground truth is read."""
  def reward(prompts, completions, **_):
    del prompts
    labels, shares = majority_labels(task, completions, group_size)
    out = np.zeros(len(completions), np.float32)
    for i, c in enumerate(completions):
      g = i // group_size
      if labels[g] is not None and shares[g] >= min_share:
        out[i] = float(task.extract_answer(c) == labels[g])
    return out
  return reward


def format_reward(task: Task) -> RewardFn:
  """1 when an answer can be extracted at all: shapes output before correctness."""
  def reward(prompts, completions, **_):
    del prompts
    return np.asarray([float(task.extract_answer(c) is not None) for c in completions],
                      np.float32)
  return reward


def combine(*weighted: tuple[RewardFn, float]) -> RewardFn:
  """sum_i w_i * fn_i(...)."""
  def reward(prompts, completions, **fields):
    return sum(w * np.asarray(fn(prompts, completions, **fields), np.float32)
               for fn, w in weighted)
  return reward

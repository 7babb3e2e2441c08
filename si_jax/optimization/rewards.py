"""Reward functions: verifiable and heuristic (survey §4, Reward). Model-based ones: judge.py,
and the learned reward model in si_jax/models/reward_model.py.

A reward is a plain callable `fn(prompts, completions, **fields) -> np.ndarray [N]`, run on the
host between jitted steps. `fields` carries per-completion extras such as `answers` (reference
answers, for verifiable rewards). Completions of one prompt are consecutive (rows b*n .. b*n+n-1),
as the sampler returns them; group rewards take `group_size`.

Rewards are built by name through `REWARDS` (name -> factory), so a loop reads `config.rl.reward`
without importing the module that defines it (judge.py's 'self_judge' included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from si_jax.tasks import Problem, Task

RewardFn = Callable[..., np.ndarray]
# name -> factory(task, *, group_size, min_share, exp) -> RewardFn; see `register_reward`.
REWARDS: dict[str, Callable[..., RewardFn]] = {}


def register_reward(name: str):
  """Registers a reward factory under `name` (the value of config.rl.reward / config.gro.reward).
  Factories take the task and keyword context: `group_size`, `min_share` (the vote's confidence
  floor) and `exp` (the experiment, for model-based rewards); they use what they need."""
  def register(factory):
    REWARDS[name] = factory
    return factory
  return register


def make_reward(name: str, task: Task, *, group_size: int, min_share: float = 0.0, exp=None,
                params=None, key: str = 'config.rl.reward') -> RewardFn:
  """The reward registered as `name`; `key` is the config field it came from (for errors).
  exp and params: the model, for rewards the policy computes itself (`self_judge`)."""
  if name not in REWARDS:
    raise ValueError(f'{key}={name!r} is not a registered reward; use one of {sorted(REWARDS)}')
  return REWARDS[name](task, group_size=group_size, min_share=min_share, exp=exp, params=params,
                       key=key)


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


# --- The registry ------------------------------------------------------------------------------


@register_reward('verifiable')
def _verifiable(task, **_):
  return verifiable(task)


@register_reward('majority')
def _majority(task, *, group_size, min_share, **_):
  return majority_vote(task, group_size, min_share)


@register_reward('verifiable+format')
def _verifiable_and_format(task, **_):
  return combine((verifiable(task), 1.0), (format_reward(task), 0.1))


@register_reward('self_judge')
def _self_judge(task, *, exp, params, key, **_):
  """The policy's own verdict-token probability (judge.py). The tokenizer must hold the judge
  template's characters (config.tokenizer_extra_chars); the loop judges with the policy's
  current params (`judge.with_params`)."""
  del task
  if exp is None or params is None:
    raise ValueError(f"{key}='self_judge' needs the model: pass exp and params to make_reward")
  # Imported here: judge pulls in the model stack, and evaluation imports this module.
  from si_jax.optimization import judge  # pylint: disable=g-import-not-at-top
  return judge.judge_reward(exp.model, params, exp.tokenizer, yes='y', no='n')

"""Sample-based accuracy metrics: pass@k, maj@k and their breakdown by difficulty.

pass@k (can the model find an answer in k tries?) and maj@k (does self-consistency over k tries
find it?) bracket what sampling-based self-improvement can reach: the gap between pass@k and
pass@1 is what rejection sampling and RL can distil into the first sample (survey §6).

A sample is correct when its verified reward is 1.0 (some verifiers give partial credit, which
counts towards the mean reward only).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from si_jax.tasks import Problem, Task


def pass_at_k(n, c, k: int):
  """The unbiased pass@k estimator (Chen et al. 2021): 1 - C(n - c, k) / C(n, k).

  With n samples of which c are correct, this is the chance that k of them drawn without
  replacement contain a correct one. Computed as 1 - prod_{i=n-c+1..n} (1 - k / i) (summed in
  log space), which never forms the huge binomials. Vectorised over arrays of n and c (which
  broadcast); returns a float for scalar inputs.
  """
  n_arr, c_arr = np.broadcast_arrays(np.asarray(n, np.int64), np.asarray(c, np.int64))
  if k < 1:
    raise ValueError(f'pass_at_k: k={k} must be >= 1')
  if np.any(c_arr < 0) or np.any(c_arr > n_arr):
    raise ValueError(f'pass_at_k: need 0 <= c <= n, got n={n}, c={c}')
  if np.any(n_arr < k):
    raise ValueError(f'pass_at_k: k={k} is more than the samples drawn (n={n})')
  i = np.arange(1, int(n_arr.max(initial=1)) + 1)  # [I], broadcast against [..., 1].
  in_product = (i > (n_arr - c_arr)[..., None]) & (i <= n_arr[..., None])
  # Where every product term has i > k; elsewhere n - c < k and pass@k is 1 (handled below).
  safe_i = np.where(in_product & (i > k), i, k + 1)
  log_miss = np.sum(np.where(in_product, np.log1p(-k / safe_i), 0.0), axis=-1)
  out = np.where(n_arr - c_arr < k, 1.0, 1.0 - np.exp(log_miss))
  return float(out) if out.ndim == 0 else out


def maj_at_k(task: Task, problems: Sequence[Problem], completions_per_problem, k: int,
             rewards_per_problem=None) -> np.ndarray:
  """Per problem, 1.0 when the majority answer of its first k completions is correct: [P].

  Completions without an answer abstain; ties go to the answer seen first. The majority answer
  is verified through the first completion that gave it, so tasks whose verifier does more than
  compare strings (e.g. runs code) work unchanged. Pass `rewards_per_problem` (verified rewards
  aligned with the completions) to reuse them instead of verifying again.
  """
  _check_counts(problems, completions_per_problem, k)
  out = np.zeros(len(problems), np.float64)
  for p, (problem, completions) in enumerate(zip(problems, completions_per_problem)):
    first = list(completions[:k])
    label, _ = task.majority(first)
    if label is None:
      continue
    j = next(j for j, c in enumerate(first) if task.extract_answer(c) == label)
    reward = (rewards_per_problem[p][j] if rewards_per_problem is not None
              else task.verify(problem, first[j]))
    out[p] = float(reward >= 1.0)
  return out


def by_difficulty(problems: Sequence[Problem], values) -> dict[int, float]:
  """The mean of per-problem `values` at each difficulty, keyed by difficulty (sorted)."""
  values = np.asarray(values, np.float64)
  if values.shape != (len(problems),):
    raise ValueError(f'by_difficulty: {values.shape} values for {len(problems)} problems')
  groups = collections.defaultdict(list)
  for problem, v in zip(problems, values):
    groups[int(problem.difficulty)].append(v)
  return {d: float(np.mean(groups[d])) for d in sorted(groups)}


def summarize(task: Task, problems: Sequence[Problem], completions_per_problem,
              ks: Sequence[int] = (1, 4)) -> dict[str, Any]:
  """Flat, JSON-friendly metrics of sampled completions (each verified once).

  Keys: 'accuracy@1' (the first sample), 'pass@k' and 'maj@k' for each k in ks, 'reward' (mean
  verified reward over all samples), each also per difficulty as '<key>/d<difficulty>'; plus
  'num_problems'. Every problem needs at least max(ks) completions.
  """
  ks = tuple(int(k) for k in ks)
  _check_counts(problems, completions_per_problem, max(ks, default=1))
  rewards = [[float(task.verify(problem, c)) for c in completions]
             for problem, completions in zip(problems, completions_per_problem)]
  n = np.asarray([len(r) for r in rewards])
  c = np.asarray([sum(x >= 1.0 for x in r) for r in rewards])
  per_problem = {'accuracy@1': np.asarray([r[0] >= 1.0 for r in rewards], np.float64),
                 'reward': np.asarray([np.mean(r) for r in rewards], np.float64)}
  for k in ks:
    per_problem[f'pass@{k}'] = pass_at_k(n, c, k)
    per_problem[f'maj@{k}'] = maj_at_k(task, problems, completions_per_problem, k, rewards)
  out: dict[str, Any] = {'num_problems': len(problems)}
  for key, values in per_problem.items():
    out[key] = float(np.mean(values))
    for d, v in by_difficulty(problems, values).items():
      out[f'{key}/d{d}'] = v
  return out


def _check_counts(problems, completions_per_problem, k: int):
  if not problems:
    raise ValueError('no problems to evaluate')
  if len(problems) != len(completions_per_problem):
    raise ValueError(f'{len(problems)} problems but {len(completions_per_problem)} lists of '
                     f'completions')
  short = [i for i, cs in enumerate(completions_per_problem) if len(cs) < k]
  if short:
    raise ValueError(f'problem {short[0]} has {len(completions_per_problem[short[0]])} '
                     f'completions; k={k} needs at least {k} per problem')


def paired_change(before, after) -> tuple[float, float]:
  """(mean of after - before, its standard error) over examples measured twice: the same
  monitoring set scored at two rounds. Pairing cancels how hard each example is, so the error
  is that of the change, not of either mean (sd of the differences / sqrt(n))."""
  before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
  if before.shape != after.shape or before.ndim != 1 or not len(before):
    raise ValueError(f'paired_change: need two equal 1-d arrays, got {before.shape} and '
                     f'{after.shape}')
  diff = after - before
  se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float('inf')
  return float(diff.mean()), se


def paired_interval(before, after, z: float = 1.96) -> dict[str, float]:
  """The mean paired difference after - before with its normal-approximation interval
  (z = 1.96: 95%), e.g. per-problem correctness of two models on one benchmark."""
  change, se = paired_change(before, after)
  return {'mean': change, 'low': change - z * se, 'high': change + z * se, 'n': len(before)}

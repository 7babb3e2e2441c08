"""Dynamic benchmarks: fresh problems every round that the model never trained on (survey §6).

A fixed test set leaks into a self-improving loop (its problems can be regenerated, solved and
trained on), so each round draws a new benchmark from a seed derived from (seed, round) and
redraws any problem whose prompt was already seen: in the data store, or earlier in the same
benchmark. The same (seed, round, exclusions) always give the same benchmark.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from si_jax.data.store import DataStore
from si_jax.tasks import Problem, Task

# Mixed into every benchmark seed so benchmark streams never coincide with the training streams
# that `Task.generate(seed, n, difficulty)` draws from `default_rng([seed, difficulty])`.
_BENCHMARK_SALT = 0xBE4C
_DRAWS_PER_PROBLEM = 20  # Retry budget: draws allowed per wanted problem (plus a fixed 100).


def prompt_hash(prompt: str) -> str:
  """A short content hash of a prompt: the first 16 hex characters of its sha256."""
  return hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:16]


def prompt_hashes(prompts, rewrites=None) -> frozenset[str]:
  """Hashes of the prompts and, with `rewrites` (e.g. `Task.equivalent_prompts`), of every
  equivalent rewrite of each: a benchmark holding b+a is as contaminated as one holding a+b."""
  expand = rewrites or (lambda prompt: [prompt])
  return frozenset(prompt_hash(view) for prompt in prompts for view in expand(prompt))


def store_hashes(store: DataStore, rewrites=None) -> frozenset[str]:
  """Hashes of every prompt in every complete round of `store` (and of its rewrites).

  Environment examples also record the episode's original problem as 'problem_prompt' (their
  'prompt' grows with feedback on retries); that counts too.
  """
  prompts = []
  for r in store.rounds():
    for ex in store.read_round(r):
      prompts.append(ex['prompt'])
      if isinstance(ex.get('problem_prompt'), str):
        prompts.append(ex['problem_prompt'])
  return prompt_hashes(prompts, rewrites)


def fresh_benchmark(task: Task, round_idx: int, seed: int, per_difficulty: int,
                    difficulties: Sequence[int] | None = None,
                    exclude_hashes: frozenset[str] = frozenset()) -> list[Problem]:
  """`per_difficulty` distinct unseen problems at each difficulty (task order by default).

  Problems come grouped by difficulty, in the order given. Raises ValueError when a difficulty
  level cannot supply enough distinct unseen problems within the retry budget (small levels,
  e.g. 1-character strings, run out).
  """
  difficulties = tuple(task.difficulties if difficulties is None else difficulties)
  unknown = [d for d in difficulties if d not in task.difficulties]
  if unknown:
    raise ValueError(f'{task.name}: difficulties {unknown} not in {task.difficulties}')
  if per_difficulty < 0:
    raise ValueError(f'per_difficulty={per_difficulty} must be >= 0')
  seen = set(exclude_hashes)
  problems = []
  for d in difficulties:
    rng = np.random.default_rng([_BENCHMARK_SALT, seed, round_idx, d])
    budget = _DRAWS_PER_PROBLEM * per_difficulty + 100
    found = 0
    for _ in range(budget):
      if found == per_difficulty:
        break
      problem = task.make_problem(rng, d)
      h = prompt_hash(problem.prompt)
      if h not in seen:
        seen.add(h)
        problems.append(problem)
        found += 1
    if found < per_difficulty:
      raise ValueError(
          f'{task.name}: found only {found} distinct unseen problems at difficulty {d} in '
          f'{budget} draws, {per_difficulty} wanted ({len(exclude_hashes)} prompts excluded); '
          f'this level has too few distinct problems: lower per_difficulty or drop level {d}')
  return problems

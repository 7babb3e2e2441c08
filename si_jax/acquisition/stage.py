"""Acquisition's part of a self-improvement round (si_jax/lifecycle.py, steps 1-2).

Fresh problems from the task's generator at the controller's levels (environment interaction:
the model acts on problems nobody labelled), and the model's samples of each problem and of its
equivalent rewrites (`Task.equivalent_prompts`): several views of one problem err differently,
so a vote over all of them is a stronger pseudo-label than a vote over one.
"""

from __future__ import annotations

import numpy as np

from si_jax import sampling
from si_jax.tasks import Problem, Task


def fresh_problems(task: Task, loop, seed: int, round_idx: int, top: int) -> list[Problem]:
  """loop.problems_per_round problems: loop.top_level_share of them at the top level `top`
  (where the model is learning), the rest uniform over the levels below it."""
  levels = [d for d in task.difficulties if d <= top] or [task.difficulties[0]]
  top, below = levels[-1], levels[:-1]
  rng = np.random.default_rng([seed, 3, round_idx])
  def level():
    return top if not below or rng.random() < loop.top_level_share else int(rng.choice(below))
  return [task.make_problem(rng, level()) for _ in range(loop.problems_per_round)]


def sample(sampler: sampling.Sampler, params, tokenizer, task: Task, problems: list[Problem],
           loop, seed: int):
  """loop.group_size samples of each problem, and as many of each of its rewrites when
  loop.rewrites: (samples per problem, the sampler's output for the generation monitors)."""
  views = [task.equivalent_prompts(p.prompt) if loop.rewrites else [p.prompt] for p in problems]
  prompts = [v for vs in views for v in vs]
  texts, out = sampler.generate(params, tokenizer, prompts, max_new_tokens=loop.max_new_tokens,
                                strategy=sampling.Temperature(loop.temperature),
                                n=loop.group_size, seed=seed)
  samples, i = [], 0
  for vs in views:
    samples.append([c for group in texts[i:i + len(vs)] for c in group])
    i += len(vs)
  return samples, out

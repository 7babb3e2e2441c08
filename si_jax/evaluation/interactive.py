"""Interactive accuracy: a task scored through the multi-turn environment loop (survey §6).

Single-shot accuracy misses what environment feedback adds: a model that repairs its code from a
failing test is better than its first attempt says. We report success within each number of
turns, so the gain from feedback is success@max_turns - success@1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from si_jax.acquisition import interaction
from si_jax.tasks.base import Problem
from si_jax.tasks.code import CodeTask


def interactive_accuracy(policy: interaction.Policy, task: CodeTask, problems: Sequence[Problem],
                         max_turns: int, workers: int | None = None) -> dict[str, Any]:
  """Episode metrics: 'success@t' (solved within t turns) for t = 1..max_turns, 'success'
  (within max_turns), 'mean_turns' (turns used; a failed episode used all max_turns) and
  'num_problems'."""
  if not problems:
    raise ValueError('interactive_accuracy: no problems')
  trajectories = interaction.run_episodes(policy, task, problems, max_turns, workers=workers)
  turns = np.asarray([len(t.turns) for t in trajectories])
  solved = np.asarray([t.success for t in trajectories])
  out: dict[str, Any] = {f'success@{k}': float(np.mean(solved & (turns <= k)))
                         for k in range(1, max_turns + 1)}
  out.update(success=float(solved.mean()), mean_turns=float(turns.mean()),
             num_problems=len(problems))
  return out

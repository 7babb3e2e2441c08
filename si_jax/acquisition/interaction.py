"""Environment interaction (survey §2.3): write code, read the test failure, try again.

An episode is up to `max_turns` attempts at one CodeTask problem. After a failed attempt the
environment appends the attempt, a short `# Feedback:` block (the failing test or the end of the
traceback) and the signature again, so the next prompt continues from a fresh `def f(...):`.
Whole trajectories, failed turns included, are the acquired data: a failed turn with its feedback
is what a later round learns to repair from.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

from si_jax.tasks import sandbox
from si_jax.sampling import Greedy, Sampler, Strategy
from si_jax.tasks.base import Problem
from si_jax.tasks.code import CodeTask
from si_jax.tokenizers import Tokenizer

Policy = Callable[[list[str]], list[str]]  # A batch of prompts -> one completion each.
_FEEDBACK_LINES = 3  # Lines of a traceback kept: the failing line and the error.
_FEEDBACK_LINE_CHARS = 160


@dataclasses.dataclass
class Turn:
  prompt: str  # The full text the policy saw.
  completion: str
  reward: float
  feedback: str  # What the environment answered ('' after a success).
  status: str  # The sandbox status ('ok', 'error', 'timeout', ...).


@dataclasses.dataclass
class Trajectory:
  problem: Problem
  turns: list[Turn] = dataclasses.field(default_factory=list)
  success: bool = False
  final_reward: float = 0.0

  def to_examples(self, round_idx: int, model_step: int) -> list[dict[str, Any]]:
    """One data-store example per turn, with its provenance."""
    return [dict(prompt=t.prompt, completion=t.completion, reward=t.reward, scores={},
                 source='environment', round=round_idx, model_step=model_step, turn=i,
                 problem_prompt=self.problem.prompt, feedback=t.feedback)
            for i, t in enumerate(self.turns)]


def feedback(result: sandbox.ExecResult) -> str:
  """A few lines on why an attempt failed: the end of the traceback is where the error is."""
  if result.status == 'timeout':
    return 'Timeout: the program ran out of time.'
  if result.status == 'out_of_memory':
    return 'MemoryError: the program ran out of memory.'
  if result.status == 'killed':
    return f'The program was killed (signal {-(result.returncode or 0)}).'
  lines = [l.strip() for l in result.stderr.splitlines()
           if l.strip() and not l.startswith('Traceback (')
           and not set(l.strip()) <= set('^~')  # Caret markers.
           and not l.lstrip().startswith('File "<string>"')]  # The sandbox's own frame.
  lines = [l[:_FEEDBACK_LINE_CHARS] for l in lines[-_FEEDBACK_LINES:]]
  return '\n'.join(lines) or f'The program failed (status {result.status}).'


def retry_prompt(prompt: str, completion: str, note: str, signature: str) -> str:
  """The next turn's prompt: this one, the attempt, the feedback as comments, the signature."""
  attempt = completion if completion.endswith('\n') else completion + '\n'
  lines = note.splitlines() or ['']
  block = f'# Feedback: {lines[0]}\n' + ''.join(f'# {l}\n' for l in lines[1:])
  return prompt + attempt + block + '# Try again.\n' + signature


def run_episodes(policy: Policy, task: CodeTask, problems: Sequence[Problem], max_turns: int,
                 workers: int | None = None) -> list[Trajectory]:
  """Runs all episodes in lockstep: one policy call per turn for every unfinished problem.

  The sandbox runs of a turn go in parallel on `workers` threads (each waits on a subprocess).
  """
  if max_turns < 1:
    raise ValueError(f'max_turns={max_turns} must be >= 1')
  trajectories = [Trajectory(problem=p) for p in problems]
  prompts = [p.prompt for p in problems]
  workers = workers or min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for _ in range(max_turns):
      live = [i for i, t in enumerate(trajectories) if not t.success]
      if not live:
        break
      completions = policy([prompts[i] for i in live])
      if len(completions) != len(live):
        raise ValueError(f'the policy returned {len(completions)} completions for {len(live)} '
                         f'prompts')
      results = pool.map(lambda ic: task.run_hidden_tests(problems[ic[0]], ic[1]),
                         zip(live, completions))
      for i, completion, (reward, result) in zip(live, completions, results):
        note = '' if reward == 1.0 else feedback(result)
        trajectories[i].turns.append(Turn(prompts[i], completion, reward, note, result.status))
        trajectories[i].success, trajectories[i].final_reward = reward == 1.0, reward
        if reward < 1.0:
          prompts[i] = retry_prompt(prompts[i], completion, note, task.signature(problems[i]))
  return trajectories


def run_episode(policy: Policy, task: CodeTask, problem: Problem, max_turns: int) -> Trajectory:
  """One problem until it is solved or `max_turns` attempts failed."""
  return run_episodes(policy, task, [problem], max_turns)[0]


def model_policy(sampler: Sampler, params, tokenizer: Tokenizer, max_new_tokens: int,
                 strategy: Strategy = Greedy(), seed: int = 0, stop: Sequence[str] = ()
                 ) -> Policy:
  """A policy that samples one completion per prompt from the model.

  Every call draws fresh seeds (the offset advances by the batch size), so with a sampling
  strategy a retry is not a replay of the previous turn's randomness.
  """
  offset = [seed]

  def policy(prompts: list[str]) -> list[str]:
    texts, _ = sampler.generate(params, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                strategy=strategy, n=1, seed=offset[0], stop=stop)
    offset[0] += len(prompts)
    return [t[0] for t in texts]

  return policy

"""The task interface: a verifiable environment the loop acquires, rewards and evaluates with.

A task generates problems from a seed at a chosen difficulty, formats the prompt, extracts the
answer from a completion and verifies it. The same object feeds acquisition (problems), reward
(the verifier) and evaluation (fresh benchmarks). Verifiers never raise: junk gets 0.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Problem:
  prompt: str  # What the model sees.
  answer: str  # The reference answer (its label; self-improvement rounds never train on it).
  difficulty: int


class Task(abc.ABC):
  name: str
  difficulties: tuple[int, ...]

  @abc.abstractmethod
  def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
    """One problem at `difficulty`, drawn with `rng`."""

  @abc.abstractmethod
  def alphabet(self) -> str:
    """Every character a prompt or answer can contain (to train a char tokenizer)."""

  def generate(self, seed: int, n: int, difficulty: int) -> list[Problem]:
    if difficulty not in self.difficulties:
      raise ValueError(f'{self.name}: difficulty {difficulty} not in {self.difficulties}')
    rng = np.random.default_rng([seed, difficulty])
    return [self.make_problem(rng, difficulty) for _ in range(n)]

  def solve(self, prompt: str) -> str | None:
    """The task's own solver: the reference answer of any well-formed prompt, or None when the
    prompt is malformed or the task has no solver. Labels synthetic problems (survey §2.4)."""
    del prompt
    return None

  def is_well_formed(self, prompt: str) -> bool:
    """Whether `prompt` is a problem of this task (filters model-written problems)."""
    return self.solve(prompt) is not None

  def equivalent_prompts(self, prompt: str) -> list[str]:
    """Rewrites of `prompt` with the same answer, `prompt` first (here: just `prompt`).

    Voting over samples of several rewrites is self-consistency across views of one problem:
    a model's errors depend on where things sit in its context, so different views err
    differently while the right answer stays the same (e.g. a+b and b+a)."""
    return [prompt]

  def plausible_answer(self, prompt: str, answer: str) -> bool:
    """A label-free sanity check of an extracted answer (here: always true). Tasks override it
    with what the prompt alone implies, e.g. the answer's length (Lee et al. 2025's length
    filter), so pseudo-labels with the wrong shape are dropped without any ground truth."""
    del prompt, answer
    return True

  def extract_answer(self, completion: str) -> str | None:
    """The answer part of a completion (here: all of it, stripped); None when there is none."""
    if not isinstance(completion, str):
      return None
    answer = completion.strip()
    return answer or None

  def verify(self, problem: Problem, completion: str) -> float:
    """Reward in [0, 1]: 1 for an exactly correct answer. Never raises."""
    try:
      return float(self.extract_answer(completion) == problem.answer)
    except Exception:  # pylint: disable=broad-except
      return 0.0

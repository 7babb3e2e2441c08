"""The task interface: a verifiable environment the loop acquires, rewards and evaluates with.

A task generates problems from a seed at a chosen difficulty, formats the prompt, extracts the
answer from a completion and verifies it. The same object feeds acquisition (problems), reward
(the verifier) and evaluation (fresh benchmarks). Verifiers never raise: junk gets 0.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

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

  def sample(self, seed, n: int, weights: Sequence[float] | None = None,
             difficulties: Sequence[int] | None = None) -> list[Problem]:
    """n problems drawn with `np.random.default_rng(seed)`, each at a level of `difficulties`
    (default: all of the task's) picked uniformly or in proportion to `weights` (one
    non-negative weight per level). The same seed gives the same problems on any machine."""
    levels = tuple(self.difficulties if difficulties is None else difficulties)
    unknown = [d for d in levels if d not in self.difficulties]
    if unknown or not levels:
      raise ValueError(f'{self.name}: difficulty levels {list(levels)} must be some of '
                       f'{self.difficulties}')
    p = None
    if weights is not None and len(weights):
      p = np.asarray(weights, np.float64)
      if p.shape != (len(levels),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f'difficulty weights {list(weights)} must be one non-negative weight '
                         f'per level of {self.name} {levels}, not all zero')
      p = p / p.sum()
    rng = np.random.default_rng(seed)
    return [self.make_problem(rng, int(rng.choice(levels, p=p))) for _ in range(n)]

  def generate(self, seed: int, n: int, difficulty: int) -> list[Problem]:
    """n problems at one level (a level's own stream: `[seed, difficulty]`)."""
    return self.sample([seed, difficulty], n, difficulties=(difficulty,))

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

  def final_answer(self, answer: str) -> str:
    """The result part of a reference answer (here: all of it). Tasks whose answers carry a
    chain of thought return the part after it: STaR's rationalization hint is this, never the
    written steps, so the model has to produce the rationale itself."""
    return answer

  def hinted_prompt(self, problem: Problem, template: str) -> str:
    """`problem`'s prompt with its final answer as a hint (STaR rationalization, Zelikman et
    al. 2022 §3.2); `template` has `{answer}` and `{prompt}` fields, e.g. '{answer}|{prompt}'."""
    return template.format(answer=self.final_answer(problem.answer), prompt=problem.prompt)

  def extract_answer(self, completion: str) -> str | None:
    """The answer part of a completion (here: all of it, stripped); None when there is none."""
    if not isinstance(completion, str):
      return None
    answer = completion.strip()
    return answer or None

  def majority(self, completions: Sequence[str], weights: Sequence[float] | None = None
               ) -> tuple[str | None, float]:
    """The answer with the most (weighted) votes among `completions`, and its share of all the
    weight: the one vote behind every pseudo-label, self-consistency answer and agreement score.

    Completions without an answer abstain but count in the share's denominator, so shares
    compare across groups; ties go to the answer seen first; no votes gives (None, 0.0).
    """
    w = np.ones(len(completions)) if weights is None else np.asarray(weights, np.float64)
    if len(w) != len(completions):
      raise ValueError(f'{len(w)} weights for {len(completions)} completions')
    votes: dict[str, float] = {}  # Insertion order breaks ties.
    for completion, weight in zip(completions, w):
      answer = self.extract_answer(completion)
      if answer is not None:
        votes[answer] = votes.get(answer, 0.0) + float(weight)
    if not votes:
      return None, 0.0
    best, total = max(votes, key=votes.get), float(w.sum())
    return best, votes[best] / total if total > 0 else 0.0

  def verify(self, problem: Problem, completion: str) -> float:
    """Reward in [0, 1]: 1 for an exactly correct answer. Never raises."""
    try:
      return float(self.extract_answer(completion) == problem.answer)
    except Exception:  # pylint: disable=broad-except
      return 0.0

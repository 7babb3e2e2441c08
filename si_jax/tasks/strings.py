"""String tasks: copy and reversal of random strings; difficulty = string length."""

from __future__ import annotations

import dataclasses

import numpy as np

from si_jax.tasks.base import Problem, Task


@dataclasses.dataclass
class StringTask(Task):
  """`<string>>` -> the string reversed (or copied). E.g. prompt 'abc>' -> answer 'cba'."""
  reverse: bool = True
  letters: str = 'abcdefghij'
  min_len: int = 1
  max_len: int = 8

  def __post_init__(self):
    self.name = 'reverse' if self.reverse else 'copy'
    self.difficulties = tuple(range(self.min_len, self.max_len + 1))

  def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
    s = ''.join(rng.choice(list(self.letters), size=difficulty))
    return Problem(prompt=s + '>', answer=s[::-1] if self.reverse else s, difficulty=difficulty)

  def alphabet(self) -> str:
    return self.letters + '>'

  def solve(self, prompt: str) -> str | None:
    if not isinstance(prompt, str) or not prompt.endswith('>'):
      return None
    s = prompt[:-1]
    if not self.min_len <= len(s) <= self.max_len or set(s) - set(self.letters):
      return None
    return s[::-1] if self.reverse else s

  def plausible_answer(self, prompt: str, answer: str) -> bool:
    """The output is as long as the input and uses the input's letters (multiset): a reversal
    or copy can be nothing else. Read off the prompt: no label."""
    return (isinstance(prompt, str) and isinstance(answer, str) and prompt.endswith('>') and
            sorted(answer) == sorted(prompt[:-1]))

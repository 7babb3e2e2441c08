"""Arithmetic tasks: addition (reversed or forward digits) and multiplication (optional CoT).

Reversed addition follows Lee et al. 2025: prompt `a[::-1]+b[::-1]=`, answer `str(a+b)[::-1]`
zero-padded to d+1 digits, so the model writes the least significant digit first, the order in
which carries propagate. Difficulty d = digits of the longer operand; the other has 1..d digits.
With `pad_operands` both operands are zero-padded to d digits, so every problem of a level has
one layout (digit i of a and of b always d+1 positions apart): a model learns each level from
fewer examples, the aligned format of Lee et al.'s and Zhou et al.'s arithmetic studies.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from si_jax.tasks.base import Problem, Task

_MAX_ANSWER_CHARS = 4096  # Longer completions are junk: never parsed.
_ADDITION = re.compile(r'^(\d{1,30})\+(\d{1,30})=$')
_PRODUCT = re.compile(r'^(\d{1,30})\*(\d{1,30})=$')


def _number(rng: np.random.Generator, digits: int) -> int:
  if digits == 1:
    return int(rng.integers(0, 10))
  return int(rng.integers(10 ** (digits - 1), 10 ** digits))


@dataclasses.dataclass
class AdditionTask(Task):
  reverse: bool = True
  min_digits: int = 1
  max_digits: int = 8
  pad_operands: bool = False  # Zero-pad both operands to the level's d digits.

  def __post_init__(self):
    self.name = 'addition_reversed' if self.reverse else 'addition'
    self.difficulties = tuple(range(self.min_digits, self.max_digits + 1))

  def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
    a = _number(rng, difficulty)
    b = _number(rng, int(rng.integers(1, difficulty + 1)))
    if rng.random() < 0.5:
      a, b = b, a
    width = difficulty if self.pad_operands else 0
    a, b = str(a).zfill(width), str(b).zfill(width)
    prompt = f'{a[::-1]}+{b[::-1]}=' if self.reverse else f'{a}+{b}='
    return Problem(prompt=prompt, answer=self.solve(prompt), difficulty=difficulty)

  def alphabet(self) -> str:
    return '0123456789+='

  def solve(self, prompt: str) -> str | None:
    """The sum; reversed: digits least-significant first, zero-padded to (longer operand + 1)."""
    match = _ADDITION.match(prompt) if isinstance(prompt, str) else None
    if match is None:
      return None
    a, b = match.groups()
    if self.reverse:
      digits = max(len(a), len(b))
      return str(int(a[::-1]) + int(b[::-1])).zfill(digits + 1)[::-1]
    return str(int(a) + int(b))

  def equivalent_prompts(self, prompt: str) -> list[str]:
    """The problem and its commuted twin: a+b and b+a have one answer. (Zero-padding the
    shorter operand is another rewrite; measured, it added samples but not better labels.)"""
    match = _ADDITION.match(prompt) if isinstance(prompt, str) else None
    if match is None:
      return [prompt]
    a, b = match.groups()
    return list(dict.fromkeys([prompt, f'{b}+{a}=']))

  def plausible_answer(self, prompt: str, answer: str) -> bool:
    """Reversed sums have exactly (longer operand + 1) digits; forward sums that many or one
    fewer. Read off the prompt: no label."""
    match = _ADDITION.match(prompt) if isinstance(prompt, str) else None
    if match is None or not isinstance(answer, str) or not answer.isdigit():
      return False
    digits = max(len(x) for x in match.groups())
    return len(answer) == digits + 1 if self.reverse else digits <= len(answer) <= digits + 1

  def extract_answer(self, completion: str) -> str | None:
    answer = super().extract_answer(completion)
    if answer is None or len(answer) > _MAX_ANSWER_CHARS or not answer.isdigit():
      return None
    return answer if answer.isascii() else None


@dataclasses.dataclass
class MultiplicationTask(Task):
  """`a*b=` -> a*b. With cot=True the completion first lists the partial products a * (digit i
  of b) * 10^i, each reversed, separated by '+', then '#' and the answer."""
  cot: bool = False
  min_digits: int = 1
  max_digits: int = 4

  def __post_init__(self):
    self.name = 'multiplication_cot' if self.cot else 'multiplication'
    self.difficulties = tuple(range(self.min_digits, self.max_digits + 1))

  def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
    a = _number(rng, difficulty)
    b = _number(rng, int(rng.integers(1, difficulty + 1)))
    prompt = f'{a}*{b}='
    return Problem(prompt=prompt, answer=self.solve(prompt), difficulty=difficulty)

  def alphabet(self) -> str:
    return '0123456789*=+#'

  def solve(self, prompt: str) -> str | None:
    match = _PRODUCT.match(prompt) if isinstance(prompt, str) else None
    if match is None:
      return None
    a, b = map(int, match.groups())
    if not self.cot:
      return str(a * b)
    partials = [str(a * int(d) * 10 ** i)[::-1] for i, d in enumerate(reversed(str(b)))]
    return '+'.join(partials) + '#' + str(a * b)

  def final_answer(self, answer: str) -> str:
    """The product: with cot=True the digits after the last '#'."""
    return answer.rsplit('#', 1)[-1]

  def extract_answer(self, completion: str) -> str | None:
    text = super().extract_answer(completion)
    if text is None or len(text) > _MAX_ANSWER_CHARS:
      return None
    if self.cot:
      if '#' not in text:
        return None
      text = text.rsplit('#', 1)[1]
    return text if text.isascii() and text.isdigit() else None

  def verify(self, problem: Problem, completion: str) -> float:
    """Only the final answer counts (the chain of thought is free-form)."""
    try:
      reference = self.final_answer(problem.answer)
      return float(self.extract_answer(completion) == reference)
    except Exception:  # pylint: disable=broad-except
      return 0.0

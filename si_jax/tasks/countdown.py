"""Countdown: reach a target from given numbers with + - * / (each number used at most once).

Reward 1 for an expression that uses only the given numbers and evaluates exactly to the target,
0.1 for a well-formed expression that misses, 0 otherwise. Difficulty = how many numbers.
Expressions are checked by walking a Python AST with exact fractions: nothing is eval'd.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import fractions
import operator
import re

import numpy as np

from si_jax.tasks.base import Problem, Task

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}
_MAX_EXPR_CHARS = 200


def evaluate(expression: str) -> tuple[fractions.Fraction, list[int]] | None:
  """(exact value, numbers used) of an arithmetic expression, or None if it is not one."""
  if not isinstance(expression, str) or len(expression) > _MAX_EXPR_CHARS:
    return None
  try:
    tree = ast.parse(expression.strip(), mode='eval')
  except (SyntaxError, ValueError, RecursionError, MemoryError):
    return None
  used = []

  def walk(node):
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      left, right = walk(node.left), walk(node.right)
      if isinstance(node.op, ast.Div) and right == 0:
        raise ZeroDivisionError
      return _OPS[type(node.op)](left, right)
    if isinstance(node, ast.Constant) and type(node.value) is int and 0 <= node.value < 10**6:
      used.append(node.value)
      return fractions.Fraction(node.value)
    raise ValueError('not an arithmetic expression')

  try:
    return walk(tree.body), used
  except (ValueError, ZeroDivisionError, RecursionError):
    return None


@dataclasses.dataclass
class CountdownTask(Task):
  min_numbers: int = 2
  max_numbers: int = 5
  max_value: int = 25

  def __post_init__(self):
    self.name = 'countdown'
    self.difficulties = tuple(range(self.min_numbers, self.max_numbers + 1))

  def make_problem(self, rng: np.random.Generator, difficulty: int) -> Problem:
    """Draws numbers, then a random expression over all of them: its value is the target."""
    while True:
      numbers = [int(x) for x in rng.integers(1, self.max_value + 1, size=difficulty)]
      expression = str(numbers[0])
      for x in numbers[1:]:
        op = str(rng.choice(['+', '-', '*', '/']))
        expression = f'({expression}){op}{x}' if op in '*/' else f'{expression}{op}{x}'
      value, _ = evaluate(expression)
      if value.denominator == 1 and 0 < value <= 10**4:
        shuffled = [numbers[i] for i in rng.permutation(difficulty)]
        prompt = f"{' '.join(map(str, shuffled))}->{int(value)}:"
        return Problem(prompt=prompt, answer=expression, difficulty=difficulty)

  def alphabet(self) -> str:
    return '0123456789+-*/() >:'

  def is_well_formed(self, prompt: str) -> bool:
    """No solver (search is exponential), but the format is checkable: `n1 n2 ...->target:`."""
    match = re.match(r'^(\d{1,4}(?: \d{1,4}){1,9})->(\d{1,6}):$', prompt) \
        if isinstance(prompt, str) else None
    return match is not None and len(match.group(1).split()) in self.difficulties

  def verify(self, problem: Problem, completion: str) -> float:
    try:
      parsed = evaluate(completion)
      if parsed is None:
        return 0.0
      value, used = parsed
      numbers_text, target_text = problem.prompt.rstrip(':').split('->')
      available = collections.Counter(int(x) for x in numbers_text.split())
      if collections.Counter(used) - available:  # a number not given, or used too often.
        return 0.1
      return 1.0 if value == int(target_text) else 0.1
    except Exception:  # pylint: disable=broad-except
      return 0.0

"""CodeTask: reproducible problems, hidden tests that accept references and reject near misses,
and a verifier that gives junk (and cheats) 0 without raising. Each verify is one subprocess."""

import re

import pytest
from hypothesis import given, settings, strategies as st

from si_jax.tasks.base import Problem
from si_jax.tasks.code import CodeTask, hidden_tests

TASK = CodeTask()


def _run_in_process(source: str, arg):
  """Runs one of OUR reference programs here (cheap); model code only ever runs in the sandbox."""
  namespace = {}
  exec(source, namespace)  # pylint: disable=exec-used
  return namespace['f'](arg)


def _bump_constant(answer: str) -> str | None:
  """The reference with its last constant changed (a digit + 1, a quoted letter -> 'q')."""
  matches = list(re.finditer(r"(?<![\w\[])(\d+)(?![\w\]])|'([a-z])'", answer))
  if not matches:
    return None
  m = matches[-1]
  new = str(int(m.group(1)) + 1) if m.group(1) else "'q'"
  return answer[:m.start()] + new + answer[m.end():]


def test_problems_are_reproducible_and_in_the_alphabet():
  for d in TASK.difficulties:
    problems = TASK.generate(seed=7, n=30, difficulty=d)
    assert problems == TASK.generate(seed=7, n=30, difficulty=d)
    assert problems != TASK.generate(seed=8, n=30, difficulty=d)
    for p in problems:
      assert p.difficulty == d and set(p.prompt + p.answer) <= set(TASK.alphabet())
      assert p.prompt.endswith(TASK.signature(p)) and p.answer.startswith(TASK.signature(p))
      assert p.prompt.count(', then ') == d - 1
      assert hidden_tests(p) == hidden_tests(Problem(p.prompt, 'other', d))  # From the prompt.


def test_hidden_tests_match_the_reference_and_catch_changed_constants():
  """Broad and cheap: our own reference programs, run in-process against the parsed spec."""
  for d in TASK.difficulties:
    for p in TASK.generate(seed=1, n=100, difficulty=d):
      cases = hidden_tests(p)
      assert len(cases) == 12
      assert all(_run_in_process(p.answer, arg) == want for arg, want in cases), p.prompt
  for p in TASK.generate(seed=2, n=300, difficulty=1):
    corrupted = _bump_constant(p.answer)
    if corrupted is not None:
      assert any(_run_in_process(corrupted, arg) != want for arg, want in hidden_tests(p)), (
          p.prompt)


def test_references_verify_and_corruptions_do_not():
  for d in TASK.difficulties:
    for p in TASK.generate(seed=3, n=4, difficulty=d):
      assert TASK.verify(p, p.answer) == 1.0, p.prompt
      assert TASK.verify(p, p.answer.replace('return r', 'return None')) == 0.0
  for p in TASK.generate(seed=4, n=6, difficulty=1):
    corrupted = _bump_constant(p.answer)
    if corrupted is not None:
      assert TASK.verify(p, corrupted) == 0.0, corrupted


def test_completion_forms():
  p = TASK.generate(seed=5, n=1, difficulty=2)[0]
  body = p.answer[len(TASK.signature(p)):]
  assert TASK.verify(p, body) == 1.0  # Continues the prompt's signature.
  assert TASK.verify(p, f'Here it is:\n```python\n{p.answer}```\nDone.') == 1.0
  assert TASK.verify(p, 'import math\n\n' + p.answer + '\nprint(f)\n') == 1.0
  assert TASK.verify(p, body.replace('  ', '', 1)) == 0.0  # Body not indented.


def test_failure_is_reported_like_an_assert():
  p = Problem(prompt='# Write f(x): add 2 to x.\ndef f(x):\n', answer='', difficulty=1)
  reward, result = TASK.run_hidden_tests(p, '  return x + 3\n')
  assert reward == 0.0 and result.status == 'error'
  assert result.stderr == 'AssertionError: f(0) returned 3, expected 2'
  reward, result = TASK.run_hidden_tests(p, '  return x.foo\n')
  assert reward == 0.0 and 'AttributeError' in result.stderr


@pytest.mark.parametrize('cheat', [
    'class A(int):\n  def __eq__(self, other):\n    return True\ndef f(x):\n  return A(0)\n',
    '  return float(x + 2)\n',
    'import sys\nsys.exit(0)\n',
    'import os\ndef f(x):\n  os._exit(0)\n',
    'def f(x):\n  print("__si_jax_results__ [2]")\n  raise SystemExit(0)\n',
])
def test_cheats_get_zero(cheat):
  p = Problem(prompt='# Write f(x): add 2 to x.\ndef f(x):\n', answer='', difficulty=1)
  assert TASK.verify(p, cheat) == 0.0


JUNK = ['', ' \n', '\x00\xff', '🙂' * 10, 'x' * 100_000, '(' * 1000, '  return 1/0',
        'while True: pass', '  while True:\n    pass\n', '  return [0] * 10**9',
        'import os; os.system("true")', '```python\n```', None, 12345]


def test_junk_gets_zero():
  p = TASK.generate(seed=0, n=1, difficulty=3)[0]
  for junk in JUNK:
    assert TASK.verify(p, junk) == 0.0, repr(junk)[:50]


def test_foreign_problem_gets_zero():
  p = Problem(prompt='12+34=', answer='46', difficulty=2)
  assert TASK.verify(p, '46') == 0.0
  with pytest.raises(ValueError):
    TASK.run_hidden_tests(p, '46')


@settings(max_examples=20, deadline=None)
@given(junk=st.text())
def test_verifier_never_raises(junk):
  p = TASK.generate(seed=1, n=1, difficulty=1)[0]
  assert TASK.verify(p, junk) == 0.0

"""Tasks: reproducible problems; verifiers accept references, reject corruptions, never raise."""


import pytest
from hypothesis import given, settings, strategies as st

from si_jax import tasks

NAMES = ['reverse', 'copy', 'addition_reversed', 'addition', 'multiplication',
         'multiplication_cot', 'countdown']
JUNK = ['', ' ', '\x00\xff', '🙂' * 10, '=', '#', '1' * 100_000, '9' * 5000 + '#1', '(' * 1000,
        '1/0', '2**99999999', '__import__("os").system("true")', 'while True: pass', None, 12345]


def _corrupt(answer: str) -> str:
  """Changes one digit/letter of the answer (the last one: the final result's)."""
  i = max(j for j, c in enumerate(answer) if c.isalnum())
  c = answer[i]
  new = str((int(c) + 1) % 10) if c.isdigit() else ('b' if c == 'a' else 'a')
  return answer[:i] + new + answer[i + 1:]


@pytest.mark.parametrize('name', NAMES)
def test_problems_are_reproducible_and_references_verify(name):
  task = tasks.get_task(name)
  for d in task.difficulties:
    problems = task.generate(seed=7, n=20, difficulty=d)
    assert problems == task.generate(seed=7, n=20, difficulty=d)
    assert problems != task.generate(seed=8, n=20, difficulty=d)
    for p in problems:
      assert p.difficulty == d and set(p.prompt + p.answer) <= set(task.alphabet())
      assert task.verify(p, p.answer) == 1.0
      assert task.verify(p, ' ' + p.answer + ' ') == 1.0
      assert task.is_well_formed(p.prompt) and not task.is_well_formed(p.prompt[:-1])
      assert task.solve(p.prompt) == (None if name == 'countdown' else p.answer)
      corrupted = task.verify(p, _corrupt(p.answer))
      assert corrupted == (0.1 if name == 'countdown' else 0.0)


@pytest.mark.parametrize('name', NAMES)
def test_junk_gets_zero(name):
  task = tasks.get_task(name)
  problem = task.generate(seed=0, n=1, difficulty=task.difficulties[-1])[0]
  for junk in JUNK:
    assert task.verify(problem, junk) == 0.0, repr(junk)[:50]


@pytest.mark.parametrize('name', NAMES)
@settings(max_examples=150, deadline=None)
@given(junk=st.one_of(st.text(), st.binary().map(lambda b: b.decode('latin-1'))))
def test_verifier_never_raises(name, junk):
  task = tasks.get_task(name)
  problem = task.generate(seed=1, n=1, difficulty=task.difficulties[0])[0]
  reward = task.verify(problem, junk)
  assert 0.0 <= reward <= 1.0


def test_reversed_addition_format():
  """Lee et al. 2025: reversed operands, reversed zero-padded sum, operands of unequal length."""
  task = tasks.get_task('addition_reversed', max_digits=6)
  problems = task.generate(seed=3, n=200, difficulty=6)
  for p in problems:
    a, b = p.prompt[:-1].split('+')
    assert p.answer == str(int(a[::-1]) + int(b[::-1])).zfill(7)[::-1]
  assert len({tuple(sorted(map(len, p.prompt[:-1].split('+')))) for p in problems}) > 3


def test_padded_addition_has_one_layout_per_level():
  """pad_operands: both operands zero-padded to the level's width, so a+b=... always reads
  d digits, '+', d digits; the sum (and its commuted twin's) stays the plain sum."""
  task = tasks.get_task('addition_reversed', max_digits=5, pad_operands=True)
  for d in task.difficulties:
    for p in task.generate(seed=1, n=50, difficulty=d):
      a, b = p.prompt[:-1].split('+')
      assert len(a) == len(b) == d
      assert p.answer == str(int(a[::-1]) + int(b[::-1])).zfill(d + 1)[::-1]
      assert task.solve(task.equivalent_prompts(p.prompt)[-1]) == p.answer
      assert task.plausible_answer(p.prompt, p.answer)


def test_multiplication_chain_of_thought_sums_to_answer():
  task = tasks.get_task('multiplication_cot')
  for p in task.generate(seed=0, n=50, difficulty=4):
    partials, answer = p.answer.split('#')
    a, b = map(int, p.prompt[:-1].split('*'))
    assert sum(int(x[::-1]) for x in partials.split('+')) == int(answer) == a * b
    assert task.verify(p, 'garbage#' + answer) == 1.0


def test_rationalization_hint_is_the_final_answer_only():
  """STaR's hint: the product, never the written steps; tasks without steps hint the answer."""
  cot = tasks.get_task('multiplication_cot')
  p = cot.generate(seed=0, n=1, difficulty=3)[0]
  hinted = cot.hinted_prompt(p, '{answer}|{prompt}')
  product = str(eval(p.prompt[:-1]))  # pylint: disable=eval-used
  assert cot.final_answer(p.answer) == product and hinted == f'{product}|{p.prompt}'
  assert '#' in p.answer and '#' not in hinted
  reverse = tasks.get_task('reverse')
  q = reverse.generate(seed=0, n=1, difficulty=3)[0]
  assert reverse.hinted_prompt(q, '{answer}|{prompt}') == f'{q.answer}|{q.prompt}'


def test_countdown_rewards():
  task = tasks.get_task('countdown')
  p = tasks.Problem(prompt='3 5 7->22:', answer='3*5+7', difficulty=3)
  assert task.verify(p, '7+5*3') == 1.0
  assert task.verify(p, '3+5+7') == 0.1  # well-formed, wrong value
  assert task.verify(p, '3*5+7+7') == 0.1  # reuses a number
  assert task.verify(p, '22') == 0.1  # uses a number not given
  assert task.verify(p, '3*5+') == 0.0
  assert task.verify(p, '__import__("os")') == 0.0


def test_unknown_task_is_named():
  with pytest.raises(ValueError, match='config.task.name'):
    tasks.get_task('sudoku')
  with pytest.raises(ValueError, match='difficulty'):
    tasks.get_task('addition').generate(seed=0, n=1, difficulty=99)


def test_majority_vote_abstains_breaks_ties_first_seen_and_weighs():
  task = tasks.StringTask(reverse=True)
  assert task.majority(['a', 'b', 'a', '']) == ('a', 0.5)  # '' has no answer: abstains.
  assert task.majority(['b', 'a', 'a', 'b']) == ('b', 0.5)
  assert task.majority(['', '']) == (None, 0.0)
  answer, share = task.majority(['a', 'b', 'b'], weights=[3.0, 1.0, 1.0])
  assert answer == 'a' and share == pytest.approx(0.6)
  with pytest.raises(ValueError, match='2 weights for 3'):
    task.majority(['a', 'b', 'b'], weights=[1.0, 1.0])


def test_sample_draws_levels_by_weight_and_generate_is_one_level_of_it():
  task = tasks.get_task('addition')
  hard = task.difficulties[-1]
  assert {p.difficulty for p in task.sample(0, 50, weights=[0.0] * (len(task.difficulties) - 1)
                                             + [1.0])} == {hard}
  assert task.sample([4, 2], 20) == task.sample([4, 2], 20)
  assert task.generate(4, 20, hard) == task.sample([4, hard], 20, difficulties=(hard,))
  with pytest.raises(ValueError, match='one non-negative weight per level'):
    task.sample(0, 5, weights=[1.0])
  with pytest.raises(ValueError, match='must be some of'):
    task.generate(0, 5, difficulty=99)

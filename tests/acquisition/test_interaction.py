"""The multi-turn environment loop: feedback between attempts, stopping, batching, provenance."""

import jax

from si_jax import models, sampling
from si_jax.acquisition import interaction
from si_jax.data import store
from si_jax.tasks.base import Problem
from si_jax.tasks.code import CodeTask
from si_jax.tokenizers import Tokenizer
from tests.helpers import tiny_model_config

TASK = CodeTask()
PROBLEM = Problem(prompt='# Write f(x): multiply x by 3, then add 2 to it.\ndef f(x):\n',
                  answer='def f(x):\n  return x * 3 + 2\n', difficulty=2)
WRONG, RIGHT = '  return x * 3\n', '  return x * 3 + 2\n'


def _turn(prompt: str) -> int:
  """0-based turn of a prompt: how many feedback blocks it holds."""
  return prompt.count('# Try again.\n')


def test_retry_after_feedback_then_success():
  trajectory = interaction.run_episode(
      lambda prompts: [RIGHT if _turn(p) else WRONG for p in prompts], TASK, PROBLEM, 4)
  assert trajectory.success and trajectory.final_reward == 1.0
  first, second = trajectory.turns
  assert (first.reward, first.status, second.reward, second.status) == (0.0, 'error', 1.0, 'ok')
  assert first.prompt == PROBLEM.prompt and first.feedback == (
      'AssertionError: f(0) returned 0, expected 2')
  assert second.prompt == (PROBLEM.prompt + WRONG + '# Feedback: ' + first.feedback + '\n'
                           '# Try again.\ndef f(x):\n')
  assert second.feedback == ''


def test_traceback_feedback_is_short():
  trajectory = interaction.run_episode(lambda prompts: ['  return x.foo(\n'] * len(prompts),
                                       TASK, PROBLEM, 1)
  note = trajectory.turns[0].feedback
  assert 'SyntaxError' in note and 'Traceback' not in note and len(note.splitlines()) <= 3


def test_always_wrong_stops_at_max_turns():
  trajectory = interaction.run_episode(lambda prompts: [WRONG] * len(prompts), TASK, PROBLEM, 3)
  assert len(trajectory.turns) == 3 and not trajectory.success
  assert trajectory.final_reward == 0.0
  assert [_turn(t.prompt) for t in trajectory.turns] == [0, 1, 2]


def test_run_episodes_batches_one_call_per_turn():
  problems = TASK.generate(seed=0, n=3, difficulty=1)
  batches = []

  def policy(prompts):  # Problem i is solved on turn i (0-based).
    batches.append(len(prompts))
    out = []
    for prompt in prompts:
      i = next(j for j, p in enumerate(problems) if prompt.startswith(p.prompt))
      out.append(problems[i].answer if _turn(prompt) >= i else '  return None\n')
    return out

  trajectories = interaction.run_episodes(policy, TASK, problems, max_turns=5)
  assert [len(t.turns) for t in trajectories] == [1, 2, 3]
  assert all(t.success for t in trajectories)
  assert batches == [3, 2, 1]  # One call per turn, for the unfinished problems only.

  examples = [ex for t in trajectories for ex in t.to_examples(round_idx=4, model_step=100)]
  assert len(examples) == 6
  for i, ex in enumerate(examples):
    store.validate(ex, i, round_idx=4)
    assert ex['source'] == 'environment' and ex['model_step'] == 100 and ex['scores'] == {}
  last = trajectories[2].to_examples(4, 100)
  assert [ex['turn'] for ex in last] == [0, 1, 2] and [ex['reward'] for ex in last] == [0, 0, 1]
  assert {ex['problem_prompt'] for ex in last} == {problems[2].prompt}
  assert 'returned None' in last[0]['feedback']


def test_model_policy_with_a_tiny_model():
  """An untrained model writes junk: every turn runs, scores 0 and nothing raises."""
  tok = Tokenizer.train([TASK.alphabet()], 128)
  model, params = models.build(tiny_model_config(vocab_size=128), jax.random.PRNGKey(0))
  policy = interaction.model_policy(sampling.Sampler(model), params, tok, max_new_tokens=16,
                                    strategy=sampling.Greedy(), seed=0)
  trajectory = interaction.run_episode(policy, TASK, PROBLEM, max_turns=2)
  assert len(trajectory.turns) == 2 and not trajectory.success
  assert all(t.reward == 0.0 and t.feedback for t in trajectory.turns)
  assert trajectory.turns[1].prompt.startswith(PROBLEM.prompt + trajectory.turns[0].completion)

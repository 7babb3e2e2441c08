"""Verifiable and heuristic rewards on constructed cases."""

import numpy as np
import pytest

from si_jax import tasks
from si_jax.optimization import rewards

TASK = tasks.get_task('addition')


def test_verifiable_uses_the_reference_answers():
  fn = rewards.verifiable(TASK)
  got = fn(['1+2=', '3+4=', '5+5='], ['3', '8', ' 10'], answers=['3', '7', '10'])
  np.testing.assert_array_equal(got, [1, 0, 1])


def test_majority_vote_rewards_agreement_without_labels():
  completions = ['5', '5', '6', 'x',   '1', '2', '3', '3']
  fn = rewards.majority_vote(TASK, group_size=4)
  np.testing.assert_array_equal(fn(['a'] * 8, completions), [1, 1, 0, 0, 0, 0, 1, 1])
  labels, shares = rewards.majority_labels(TASK, completions, 4)
  assert labels == ['5', '3'] and list(shares) == [0.5, 0.5]
  strict = rewards.majority_vote(TASK, group_size=4, min_share=0.75)
  assert strict(['a'] * 8, completions).sum() == 0
  with pytest.raises(ValueError, match='groups'):
    fn(['a'] * 3, ['1', '2', '3'])


def test_all_junk_group_gets_zero():
  fn = rewards.majority_vote(TASK, group_size=3)
  np.testing.assert_array_equal(fn(['a'] * 3, ['x', '', '?']), [0, 0, 0])


def test_format_and_combine():
  fmt = rewards.format_reward(TASK)
  np.testing.assert_array_equal(fmt(['a', 'b'], ['12', 'twelve']), [1, 0])
  both = rewards.combine((rewards.verifiable(TASK), 1.0), (fmt, 0.1))
  np.testing.assert_allclose(both(['1+1=', '1+1='], ['2', '3'], answers=['2', '2']), [1.1, 0.1])


def test_rewards_are_built_by_registered_name_and_bad_names_are_named():
  assert set(rewards.REWARDS) >= {'verifiable', 'majority', 'verifiable+format', 'self_judge'}
  vote = rewards.make_reward('majority', TASK, group_size=4, min_share=0.75)
  assert vote(['a'] * 4, ['5', '5', '5', '6']).tolist() == [1, 1, 1, 0]
  assert vote(['a'] * 4, ['5', '5', '6', '7']).sum() == 0  # min_share reached the vote.
  with pytest.raises(ValueError, match=r"config.gro.reward='judge' is not a registered reward"):
    rewards.make_reward('judge', TASK, group_size=2, key='config.gro.reward')
  with pytest.raises(ValueError, match="config.rl.reward='self_judge' needs the model"):
    rewards.make_reward('self_judge', TASK, group_size=2)

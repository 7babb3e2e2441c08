"""GRO really improves a model: the GRPO update raises the held-out verified reward of a weak SFT
model. Against continued SFT at equal steps no GRPO variant wins reliably yet
(experiments/rl/versus_sft.py and its README), so no test claims it.

Weak base models (short SFT runs on string reversal) are shared by the learning tests.
"""

import ml_collections
import pytest

from configs import grpo_addition
from si_jax import experiment, sampling, train
from si_jax.evaluation import accuracy
from si_jax.optimization import online_rl
from tests.helpers import data_parallel


def reverse_config(workdir: str) -> ml_collections.ConfigDict:
  """configs/grpo_addition.py moved to string reversal, where a weak model has room to grow."""
  c = grpo_addition.get_config()
  c.workdir = workdir
  c.task = ml_collections.ConfigDict({'name': 'reverse', 'letters': 'abcdefghij',
                                      'min_len': 1, 'max_len': 8})
  c.data.seq_len, c.rl.max_new_tokens = 20, 10
  c.train.num_steps = 60  # weak: ~25% greedy exact match
  c.rl.prompts_per_iteration, c.rl.group_size, c.rl.epochs = 16, 16, 2
  return data_parallel(c)


@pytest.fixture(scope='module')
def base_model(tmp_path_factory):
  config = reverse_config(str(tmp_path_factory.mktemp('gro')))
  return train.warm_start(config)


def test_grpo_raises_held_out_verified_reward(base_model, tmp_path):
  config = reverse_config(str(tmp_path))
  config.init_from = base_model
  config.rl.num_iterations, config.rl.eval_every = 60, 60
  # DAPO's token mean, as this test was tuned: with GRPO's per-sequence mean (the default) this
  # run measured +0.028, under the margin (experiments/rl/README.md compares the variants).
  config.rl.aggregation = 'token_mean'
  before, state = experiment.setup(config, 1)
  problems = before.task.sample([config.seed, 1], config.train.eval_size)
  initial = accuracy.sampled_reward(
      sampling.Sampler(before.model), state.params, before.tokenizer, before.task,
      problems, n=config.rl.eval_samples, max_new_tokens=config.rl.max_new_tokens,
      strategy=sampling.Temperature(config.rl.temperature), seed=config.seed)
  before.ckpt.close()
  result = online_rl.run(config)
  print('GRPO held-out sampled reward', initial, '->', result)
  assert result['eval_reward'] > initial + 0.03, (initial, result)

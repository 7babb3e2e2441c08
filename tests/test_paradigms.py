"""GRO paradigms: every config runs end to end through si_jax.main; RS and DPO learn."""

import functools
import importlib
import os


import numpy as np
import pytest

from configs import rejection_sampling as rs_config
from si_jax import experiment, main, sampling, train
from si_jax.optimization import preference, rounds


@pytest.fixture(scope='module')
def base_model(tmp_path_factory):
  """A weak SFT model on string reversal (~25% greedy accuracy), shared by the tests."""
  config = rs_config.get_config()
  config.workdir = str(tmp_path_factory.mktemp('paradigms'))
  return train.warm_start(config)


def _tiny(config, workdir):
  """Test scale: a few steps of everything."""
  config.workdir = workdir
  config.train.num_steps, config.train.eval_size, config.train.log_every = 10, 16, 5
  section = config.rl if 'rl' in config else config.gro
  for key, value in dict(num_iterations=2, num_rounds=1, prompts_per_iteration=4,
                         problems_per_round=8, group_size=2, sft_steps=2, dpo_steps=2,
                         spin_steps=2, judge_sft_steps=2, judge_seed_size=8, eval_every=1,
                         checkpoint_every=1, batch_size=8).items():
    if key in section:
      section[key] = value
  return config


@pytest.mark.parametrize('name', ['grpo_addition', 'rejection_sampling', 'self_rewarding', 'spin'])
def test_config_runs_end_to_end_and_writes_checkpoints(name, tmp_path):
  config = _tiny(importlib.import_module(f'configs.{name}').get_config(), str(tmp_path))
  result = main.run(config)
  assert os.listdir(tmp_path / 'base' / 'checkpoints')  # the base SFT phase ran first
  assert os.listdir(tmp_path / 'checkpoints')
  assert (tmp_path / 'metrics.jsonl').read_text().strip()
  assert any(k.endswith('accuracy') for k in result), result
  if name == 'self_rewarding':  # the judge's agreement with the verifier is measured
    assert 0.0 <= result['round_1_judge_accuracy'] <= 1.0
    assert result['round_1_judge_drift'] is False  # One round: nothing to drift from yet.


def test_grpo_with_the_self_judge_reward_runs(tmp_path):
  """Online RL with a model-based reward: the policy's own verdict probability."""
  config = _tiny(importlib.import_module('configs.grpo_addition').get_config(), str(tmp_path))
  config.rl.reward, config.tokenizer_extra_chars = 'self_judge', '|ok?yn'
  result = main.run(config)
  assert 0.0 <= result['eval_reward'] <= 1.0
  rows = [line for line in (tmp_path / 'metrics.jsonl').read_text().splitlines() if line]
  assert len(rows) == 2  # two iterations, rewards from the judge


def test_rejection_sampling_raises_accuracy_over_rounds(base_model, tmp_path):
  config = rs_config.get_config()
  config.workdir, config.init_from = str(tmp_path), base_model
  result = main.run(config)
  print('rejection sampling', result)
  assert result['round_3_accuracy'] >= result['round_0_accuracy'] + 0.02, result


def test_dpo_raises_the_margin_on_held_out_pairs(base_model, tmp_path):
  """Pairs (correct answer, another problem's answer): the implicit reward margin of pairs never
  trained on rises above the reference's 0."""
  config = rs_config.get_config()
  config.workdir, config.init_from = str(tmp_path), base_model
  exp = experiment.setup(config, 40)
  cfg = preference.PreferenceConfig(loss='dpo', beta=0.1)
  problems = exp.task.sample([0, 7], 256)
  wrong = [problems[(i + 1) % len(problems)].answer for i in range(len(problems))]
  keep = [i for i, p in enumerate(problems) if wrong[i] != p.answer]
  prompts = [problems[i].prompt for i in keep]
  chosen, rejected = [problems[i].answer for i in keep], [wrong[i] for i in keep]
  train, held = slice(0, 192), slice(192, None)
  reference = rounds.frozen_copy(exp.state.params)

  def held_out_margin(params):
    arrays = rounds.pair_arrays(exp.tokenizer, prompts[held], chosen[held], rejected[held], 11)
    score = functools.partial(sampling.score_tokens, exp.model)
    seq = lambda p, name: np.asarray(score(p, arrays['prompt'], arrays['prompt_mask'],
                                           arrays[f'{name}_completion'],
                                           arrays[f'{name}_mask'])[0]).sum(1)
    return float(np.mean((seq(params, 'chosen') - seq(reference, 'chosen'))
                         - (seq(params, 'rejected') - seq(reference, 'rejected'))))

  assert held_out_margin(exp.state.params) == 0.0
  rounds.train_preference(exp, rounds.preference_step(exp, cfg), cfg, reference, prompts[train],
                          chosen[train], rejected[train], width=11, num_steps=12, batch_size=32,
                          seed=0, max_epochs=2)
  margin = held_out_margin(exp.state.params)
  exp.ckpt.close()
  assert margin > 1.0, margin


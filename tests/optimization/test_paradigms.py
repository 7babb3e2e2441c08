"""GRO paradigms: every config runs end to end through si_jax.main, each paradigm keeps its
paper's form, and STaR and DPO learn. ReST-EM's learning test against a tuned control is in
test_gro_learning.py."""

import functools
import importlib
import os
import types

import jax
import numpy as np
import pytest

from configs import rejection_sampling as rs_config
from experiments.paradigms import compare
from si_jax import experiment, main, sampling, tasks, tokenizers
from si_jax.optimization import preference, rejection_sampling, rollout, rounds, self_play
from tests import helpers


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
  if name == 'self_rewarding':  # Two base steps write no well-formed prompt: draw them.
    config.gro.prompts = 'task'
  result = main.run(config)
  assert os.listdir(tmp_path / 'base' / 'checkpoints')  # the base SFT phase ran first
  assert os.listdir(tmp_path / 'checkpoints')
  assert (tmp_path / 'metrics.jsonl').read_text().strip()
  assert any(k.endswith('accuracy') for k in result), result
  if name == 'self_rewarding':  # the judge's agreement with the verifier is measured
    assert 0.0 <= result['round_1_judge_accuracy'] <= 1.0
    assert result['round_1_judge_drift'] == 0.0  # One round: nothing to drift from yet.
    assert result['round_1_judge_drift_flag'] is False


# experiments/paradigms/README.md: STaR on multiplication with written partial products, from a
# base that memorised a 256-problem seed set; 2 rounds of 4,096 fresh problems x 4 samples.
STAR_SCALE = ['data.seed_set_size=256', 'train.num_steps=200', 'gro.problems_per_round=4096',
              'gro.num_rounds=2', 'gro.sft_steps=90', 'gro.group_size=4']


def test_star_beats_tuned_continued_sft_at_equal_steps(tmp_path):
  """STaR (rationales, rationalization, restarts from the base) against continued SFT at the
  better of LR 1e-3 / 3e-3 for its whole nominal budget (experiments/paradigms/compare.py):
  over two seeds the paired gain in held-out greedy accuracy clears 2 standard errors."""
  star, control = [], []
  for seed in (0, 1):
    config = helpers.data_parallel(compare.get_config('star', seed, str(tmp_path / str(seed))))
    result = compare.compare(compare.override(config, STAR_SCALE),
                             control_learning_rates=(1e-3, 3e-3))
    print(f'seed {seed}', {k: v for k, v in result.items() if k != 'per_problem'})
    assert result['control_steps'] == config.gro.num_rounds * config.gro.sft_steps
    assert result['control'] == max(result['control_by_lr'].values())
    star.append(result['per_problem']['paradigm'])
    control.append(result['per_problem']['control'])
  gain, se = compare.paired_gain(np.concatenate(star), np.concatenate(control))
  print(f'STaR - tuned control, pooled over seeds: {gain:+.3f} (SE {se:.3f})')
  assert gain > 2 * se, (gain, se)


def test_dpo_raises_the_margin_on_held_out_pairs(weak_base, tmp_path):
  """Pairs (correct answer, another problem's answer): the implicit reward margin of pairs never
  trained on rises above the reference's 0."""
  config = rs_config.get_config()
  config.workdir, config.init_from = str(tmp_path), weak_base
  exp, state = experiment.setup(config, 40)
  cfg = preference.PreferenceConfig(loss='dpo', beta=0.1)
  problems = exp.task.sample([0, 7], 256)
  wrong = [problems[(i + 1) % len(problems)].answer for i in range(len(problems))]
  keep = [i for i, p in enumerate(problems) if wrong[i] != p.answer]
  prompts = [problems[i].prompt for i in keep]
  chosen, rejected = [problems[i].answer for i in keep], [wrong[i] for i in keep]
  train, held = slice(0, 192), slice(192, None)
  reference = rounds.frozen_copy(state.params)

  def held_out_margin(params):
    arrays = rounds.pair_arrays(exp.tokenizer, prompts[held], chosen[held], rejected[held], 11)
    score = functools.partial(sampling.score_tokens, exp.model)
    seq = lambda p, name: np.asarray(score(p, arrays['prompt'], arrays['prompt_mask'],
                                           arrays[f'{name}_completion'],
                                           arrays[f'{name}_mask'])[0]).sum(1)
    return float(np.mean((seq(params, 'chosen') - seq(reference, 'chosen'))
                         - (seq(params, 'rejected') - seq(reference, 'rejected'))))

  assert held_out_margin(state.params) == 0.0
  state, _ = rounds.train_preference(
      exp, rounds.preference_step(exp, cfg), state, cfg, reference, prompts[train], chosen[train],
      rejected[train], width=11, num_steps=12, batch_size=32, seed=0, max_epochs=2)
  margin = held_out_margin(state.params)
  exp.ckpt.close()
  assert margin > 1.0, margin



# --- Fidelity to the papers ------------------------------------------------------------------


def test_rest_em_restart_is_a_fresh_fine_tuning_run(weak_base, tmp_path):
  """ReST-EM's M-step from the base: after `restart`, k steps give bit for bit the params k steps
  from the base give in a fresh run (Adam moments and step reset); resetting only the params, as
  before, does not."""
  config = rs_config.get_config()
  config.workdir, config.init_from = str(tmp_path), weak_base
  exp, state = experiment.setup(config, 8)
  step_fn, base = rounds.sft_step(exp), rounds.base_params(exp, state)
  problems = exp.task.sample([0, 9], 64)
  data = [p.prompt for p in problems], [p.answer for p in problems]
  fit = lambda state, seed: rounds.train_sft(exp, step_fn, state, *data, num_steps=2,
                                             batch_size=16, seed=seed, max_epochs=10)[0]
  state = fit(state, 0)  # A fresh run from the base (step 0, zero moments): donated.
  want = rounds.frozen_copy(state.params)
  state = fit(state, 1)  # Two more steps: moments and step move on.
  assert int(state.step) == 4
  state = fit(state.replace(params=rounds.frozen_copy(base)), 0)  # Params reset, moments kept.
  kept_moments = rounds.frozen_copy(state.params)
  restart = rounds.restarter(exp)
  state = restart(state, base)
  assert int(state.step) == 0
  for leaf in jax.tree.leaves(state.opt_state):
    assert not np.any(np.asarray(leaf)), 'optimizer state not reset'
  jax.tree.map(np.testing.assert_array_equal, fit(state, 0).params, want)
  assert any(np.any(np.asarray(a) != np.asarray(b))
             for a, b in zip(jax.tree.leaves(kept_moments), jax.tree.leaves(want)))
  exp.ckpt.close()


def test_star_rationalization_keeps_the_models_rationale_without_the_hint(monkeypatch):
  """Hints carry the final product only; the kept example is (prompt without the hint, the
  rationale the model wrote), accepted when its product is right even if a step differs."""
  task = tasks.get_task('multiplication_cot')
  problems = [tasks.Problem('12*34=', task.solve('12*34='), 2),
              tasks.Problem('7*8=', task.solve('7*8='), 1)]
  written = {'408|12*34=': '84+063#408',  # A wrong partial product, the right product: kept.
             '56|7*8=': '65#57'}  # A wrong product: dropped.
  seen = []

  def fake_rollout(sampler, params, tokenizer, hinted, *, group_size, **kwargs):
    seen.extend(p.prompt for p in hinted)
    return rollout.Rollout(problems=hinted, group_size=1, prompts=[p.prompt for p in hinted],
                           completions=[written[p.prompt] for p in hinted], arrays={},
                           finish_reason=None, sampler_logprobs=None)

  monkeypatch.setattr(rollout, 'rollout', fake_rollout)
  exp = types.SimpleNamespace(task=task, tokenizer=None)
  gro = types.SimpleNamespace(group_size=1, max_new_tokens=16, accept_threshold=1.0)
  reward = lambda prompts, completions, answers: np.array(
      [task.verify(tasks.Problem(p, a, 0), c) for p, c, a in zip(prompts, completions, answers)])
  prompts, rationales = rejection_sampling.rationalize(
      exp, None, None, reward, problems, set(), template='{answer}|{prompt}', gro=gro,
      strategy=None, seed=0)
  assert seen == ['408|12*34=', '56|7*8=']  # The product, never the written steps.
  assert (prompts, rationales) == (['12*34='], ['84+063#408'])
  assert rejection_sampling.rationalize(exp, None, None, reward, problems, {'12*34=', '7*8='},
                                        template='', gro=gro, strategy=None, seed=0) == ([], [])


def test_hint_template_is_checked(weak_base):
  config = rs_config.get_config()
  tokenizer = tokenizers.Tokenizer.load(weak_base)
  for template, match in [('{answer}{prompt}{x}', 'exactly the fields'),
                          ('{answer}@{prompt}', 'tokenizer_extra_chars')]:
    config.data.hint_template = template
    with pytest.raises(ValueError, match=match):
      rejection_sampling.check_hint_template(config, tokenizer)


def test_spin_plays_on_the_fixed_sft_set():
  """SPIN's real data is the base's seed set, the same examples every iteration."""
  config = importlib.import_module('configs.spin').get_config()
  task = experiment.make_task(config)
  data = self_play.sft_set(config, task)
  assert len(data) == config.gro.problems_per_round
  assert data == self_play.sft_set(config, task)
  seed_set = {p.prompt for p in experiment.seed_split(config, task)[0]}
  assert {p.prompt for p in data} <= seed_set
  config.data.seed_set_size = 0
  with pytest.raises(ValueError, match='seed_set_size'):
    self_play.sft_set(config, task)

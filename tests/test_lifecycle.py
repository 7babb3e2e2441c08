"""The closed loop (si_jax/lifecycle.py): no ground truth in its decisions, exact resume, and
monitors that catch planted failures and stay quiet on a healthy run."""

import dataclasses
import json
import os
import random

import pytest

from configs import self_train_arithmetic
from si_jax import experiment, lifecycle, main, report, train
from si_jax.data.store import DataStore
from si_jax.evaluation import stage as evaluation_stage
from si_jax.optimization import stage as optimization_stage
from tests.helpers import data_parallel, tiny_loop_config


def shrunken_main_job(workdir: str):
  """configs/self_train_arithmetic.py:small (the main job's three phases in a few minutes) on
  the data-parallel mesh."""
  c = self_train_arithmetic.get_config('small')
  c.workdir = workdir
  return data_parallel(c)


@pytest.fixture(scope='module')
def main_job(tmp_path_factory):
  """(result, config) of one shrunken main-job run: base, tuned control, loop; no labels."""
  config = shrunken_main_job(str(tmp_path_factory.mktemp('main_job')))
  return main.run(config), config


# Margins below the smallest of seeds 0-4 of configs/self_train_arithmetic.py:small
# (experiments/self_train/README.md), not one trajectory: self - base at the last round was
# +20.5..+34.5 points, and the paired gain over the control averaged over rounds 1-3 was
# +3.0..+8.3 (from each round's gain as rounds.md prints it, in whole points: +2..+11).
MIN_GAIN_OVER_BASE = 0.1
MIN_MEAN_GAIN_OVER_CONTROL = 0.0


@pytest.mark.xdist_group('main_job')
def test_main_job_self_improves_beyond_its_tuned_control(main_job):
  """Unanimous votes alone (ground truth only scores the benchmark) lift the hardest level above
  the base, and above the best model the seed set alone buys on the same fresh problems."""
  result, config = main_job
  top = report.level_key(config.task.max_digits)
  rounds = result['history'][1:]
  trace = [(row['self'][top], row['control'][top]) for row in result['history']]
  assert result['self_hardest'] >= result['base_hardest'] + MIN_GAIN_OVER_BASE, trace
  mean_gain = sum(row['gain_over_control']['mean'] for row in rounds) / len(rounds)
  assert mean_gain > MIN_MEAN_GAIN_OVER_CONTROL, trace
  kept = [row['label_accuracy'] for row in rounds]
  assert min(kept) > 0.9, kept  # Unanimous votes are nearly always right (96-100% measured).


@pytest.mark.xdist_group('main_job')
def test_benchmark_never_holds_training_prompts(main_job):
  """The loop's benchmark excludes everything it trained on or validated with, the store and
  the whole seed set, and every equivalent rewrite of those (b+a of a stored a+b)."""
  result, config = main_job
  task = experiment.make_task(config)
  store = DataStore(os.path.join(config.workdir, 'store'))
  stored = {ex['prompt'] for r in store.rounds() for ex in store.read_round(r)}
  seed = [p.prompt for p in experiment.seed_set(config, task)]
  assert stored and seed
  seen = {view for prompt in stored | set(seed) for view in task.equivalent_prompts(prompt)}
  assert len(seen) > len(stored | set(seed))  # The rewrites add prompts to exclude.
  next_round = result['rounds'] + 1
  fresh = {p.prompt for p in evaluation_stage.benchmark_problems(
      task, config.loop, config.seed, next_round, store, seed)}
  assert len(fresh) == config.loop.eval_per_difficulty * len(task.difficulties)
  assert not fresh & seen


@pytest.fixture(scope='module')
def base_dir(tmp_path_factory):
  """A base model trained once on the tiny seed set; every test warm-starts from it."""
  return train.warm_start(tiny_loop_config(str(tmp_path_factory.mktemp('loop_base'))))


def _run(workdir, base, controller=None, seed=None, **overrides):
  config = tiny_loop_config(str(workdir), **overrides)
  config.init_from = base
  if seed is not None:
    config.seed = seed
  for key, value in (controller or {}).items():
    config.loop.controller[key] = value
  return main.run(config)


@pytest.mark.xdist_group('loop_base')
def test_killed_mid_round_resumes_to_the_same_metrics(base_dir, tmp_path, monkeypatch):
  uninterrupted = _run(tmp_path / 'a', base_dir)

  calls = []
  real_train_arm = optimization_stage.train

  def crash_in_round_two(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # Round 2's training: after its data was stored.
      raise KeyboardInterrupt('killed mid-round')
    return real_train_arm(*args, **kwargs)

  monkeypatch.setattr(optimization_stage, 'train', crash_in_round_two)
  with pytest.raises(KeyboardInterrupt):
    _run(tmp_path / 'b', base_dir)
  monkeypatch.setattr(optimization_stage, 'train', real_train_arm)
  resumed = _run(tmp_path / 'b', base_dir)

  assert resumed['history'] == uninterrupted['history']
  assert [row['round'] for row in resumed['history']] == [0, 1, 2]
  for name in (report.TABLE_FILE, report.HISTORY_FILE, report.PLOT_FILE):
    assert os.path.getsize(tmp_path / 'b' / name) > 0
  assert os.listdir(tmp_path / 'b' / 'tensorboard')
  rows = [json.loads(line) for line in open(tmp_path / 'b' / 'metrics.jsonl')]
  assert [row['step'] for row in rows] == [0, 1, 2]  # no round logged twice


@pytest.mark.xdist_group('loop_base')
def test_no_ground_truth_reaches_a_decision_or_a_training_example(base_dir, tmp_path,
                                                                  monkeypatch):
  """Scramble every label the loop could read but the seed set's: the reference answer of each
  acquired and benchmark problem becomes junk and the verifier on them a coin flip. In majority
  mode every stored example, monitor and decision is unchanged; only the report moves."""
  honest = _run(tmp_path / 'honest', base_dir)
  config = tiny_loop_config(str(tmp_path / 'blind'))
  task = experiment.make_task(config)
  seed = {p.prompt for p in experiment.seed_set(config, task)}
  cls, coin = type(task), random.Random(0)
  make_problem, verify = cls.make_problem, cls.verify

  def scrambled_problem(self, rng, difficulty):
    problem = make_problem(self, rng, difficulty)
    return problem if problem.prompt in seed else dataclasses.replace(problem, answer='junk')

  def coin_flip(self, problem, completion):
    return verify(self, problem, completion) if problem.prompt in seed else float(coin.random() < .5)

  monkeypatch.setattr(cls, 'make_problem', scrambled_problem)
  monkeypatch.setattr(cls, 'verify', coin_flip)
  blind = _run(tmp_path / 'blind', base_dir)

  stores = [DataStore(os.path.join(d, 'store')) for d in (tmp_path / 'honest', tmp_path / 'blind')]
  assert stores[0].rounds() == stores[1].rounds() == [1, 2]
  for r in stores[0].rounds():
    assert stores[0].read_round(r) == stores[1].read_round(r)
  for a, b in zip(honest['history'], blind['history'], strict=True):
    decided = lambda row: {k: v for k, v in row.items() if k not in evaluation_stage.REPORTED_ONLY}
    assert decided(a) == decided(b)  # Actions, reasons, monitors, losses, validation.
  assert [row['self'] for row in honest['history']] != [row['self'] for row in blind['history']]


@pytest.mark.xdist_group('loop_base')
def test_healthy_run_raises_no_flag_in_eight_rounds(base_dir, tmp_path):
  """Majority-vote self-training with the default monitors: the samples sharpen, but nothing is
  flagged, rolled back or stopped for eight rounds (the tolerances sit above the noise)."""
  history = _run(tmp_path, base_dir, num_rounds=8)['history'][1:]
  assert len(history) == 8
  assert not any(row['collapse_flag'] or row['reward_hacking_flag'] for row in history), [
      row['reason'] for row in history]
  assert {row['action'] for row in history} <= {'continue', 'raise_difficulty'}, [
      row['reason'] for row in history]


# Planted hack: each problem's first well-shaped sample at T=2, right or wrong, trained on for
# 80 steps a round with the collapse monitor off. Measured (seeds 0-9): the hacking flag rose in
# rounds 2-4 of nine seeds; in seed 2 the well-shaped share never rose (0.19 -> 0.26 at most),
# so there was no hack to flag. A second seed runs only if the first raises no flag: the test
# stands on the monitor, not on one machine's trajectory.
HACK_SEEDS = (0, 1)


@pytest.mark.xdist_group('loop_base')
def test_planted_reward_hack_is_flagged(base_dir, tmp_path):
  """A reward that pays for a well-formed answer, right or wrong: the proxy rises while verified
  accuracy on the labelled monitoring set falls, the monitor says so and real data comes back.
  From the base: the tuned control is right so often that even its T=2 samples are mostly
  correct."""
  flagged = {}
  for seed in HACK_SEEDS:
    start, *history = _run(tmp_path / str(seed), base_dir, seed=seed, start='base',
                           label='format', temperature=2.0, seed_mix_ratio=0.0, policy='replace',
                           num_rounds=4, sft_steps=80, min_agreement=0.0, collapse_drop=1.0,
                           controller={'regression_tol': 1.0})['history']
    flagged[seed] = [row for row in history if row['reward_hacking_flag']]
    for row in flagged[seed]:
      assert row['action'] == 'mix_real_data' and 'reward_hacking' in row['reason'], row
      # A true positive by a measure the monitor never reads: the fresh benchmark fell too.
      assert row['benchmark'] < start['benchmark'], (row['benchmark'], start['benchmark'])
    if flagged[seed]:
      return
  pytest.fail(f'no seed of {HACK_SEEDS} raised the reward-hacking flag: {flagged}')


@pytest.mark.xdist_group('loop_base')
def test_planted_collapse_is_flagged_and_real_data_mixed_back_in(base_dir, tmp_path):
  """Replace-policy training on the model's own unchecked samples (the first well-formed one,
  right or wrong) narrows its outputs while real data grows less likely: the collapse monitor
  flags it and the controller mixes real (seed) data back in."""
  result = _run(tmp_path, base_dir, start='base', label='format', temperature=1.5,
                seed_mix_ratio=0.0, policy='replace', num_rounds=6, sft_steps=40, min_agreement=0.0,
                controller={'regression_tol': 1.0})
  history = result['history'][1:]
  flagged = [i for i, row in enumerate(history) if row['collapse_flag']]
  assert flagged, [(row['diversity'], row['token_entropy']) for row in history]
  first = flagged[0]
  assert history[first]['action'] == 'mix_real_data'
  assert 'collapse' in history[first]['reason']
  mixed = next(i for i, row in enumerate(history) if row['action'] == 'mix_real_data')
  assert mixed + 1 < len(history), 'no round left to see the real data come back'
  assert all(row['real_examples'] == 0 for row in history[:mixed + 1])
  assert all(row['real_examples'] > 0 for row in history[mixed + 1:])


def test_bad_loop_settings_name_the_field(tmp_path):
  config = tiny_loop_config(str(tmp_path), label='oracle')
  with pytest.raises(ValueError, match='config.loop.label'):
    lifecycle.run(config)

"""GRO really changes a model. DAPO, RLOO given DAPO's dynamic sampling, and ReST-EM raise the
held-out verified reward of a weak SFT model beyond what a tuned continued SFT at equal steps
buys, on two seeds. Without dynamic sampling GRPO, Dr. GRPO and RLOO beat that control only
with 64 problems a rollout, ~150 s an arm (experiments/rl/README.md), too slow for the suite.
With the model's own (untrained) verdict as its reward, GRPO learns to please that judge
instead, which the reward-hacking monitor catches.

All start from the suite's weak base (tests/helpers.py: weak_base_config), as do the paradigm
tests; the versus-SFT tests also build a second seed's.
"""

import numpy as np
import pytest

from experiments.rl import versus_sft
from si_jax import experiment, sampling
from si_jax.evaluation import metrics, monitors
from si_jax.optimization import judge, online_rl
from tests import helpers


# The suite's weak base has seen its 512 labelled problems 7.5 times (60 steps of 64): more SFT
# on them buys little, while dynamic sampling keeps drawing fresh problems until every group of
# the update carries an advantage. Measured here (8 fake devices, 160 steps, 16 problems x 8
# samples an update, each seed its own base), minus the better of continued SFT at LR 1e-3 /
# 3e-3, seeds 0 / 1 (SE):
#   DAPO                      +0.107 (0.019) / +0.028 (0.014)
#   RLOO + dynamic sampling   +0.097 (0.020) / +0.022 (0.015)
# One seed can fall short of 2 SE, so each test pools two: DAPO +0.068 (SE 0.012), RLOO +0.060
# (0.013). 16 samples a problem won as much for ~40% more time. experiments/rl/README.md has the
# tables (seeds 2-3 too).
VERSUS_SFT_STEPS = 160
VERSUS_SFT_SEEDS = (0, 1)


def _versus_sft_config(root, seed: int):
  """config(algorithm, name) of versus_sft.arm_config: the 512-problem reversal setting."""
  return lambda algorithm, name: versus_sft.reverse_config(
      str(root / f'{name}_seed{seed}'), algorithm, seed, VERSUS_SFT_STEPS, seed_set=512)


@pytest.fixture(scope='module')
def tuned_controls(weak_base, tmp_path_factory):
  """(root, {seed: (base workdir, held-out rewards of the tuned control)}) for VERSUS_SFT_SEEDS.

  The control a paper would run: as many optimizer steps of SFT on the base's own seed set, at
  the better of two LRs, picked per seed on the held-out score itself (an optimistic control).
  Each seed has its own base: another seed's seed set would be fresh labels to the control."""
  root = tmp_path_factory.mktemp('versus_sft')
  controls = {}
  for seed in VERSUS_SFT_SEEDS:
    base = weak_base if seed == 0 else helpers.build_weak_base(str(root), seed)
    best, scores = versus_sft.tuned_continued_sft(_versus_sft_config(root, seed)('grpo', 'sft'),
                                                  base, VERSUS_SFT_STEPS, ['1e-3', '3e-3'])
    print(f'seed {seed} controls', {k: v.mean() for k, v in scores.items()})
    controls[seed] = base, scores[best]
  return root, controls


def _gain_over_control(tuned_controls, arm: str) -> tuple[float, float]:
  """(paired held-out gain of the arm over the tuned control, its SE), pooled over the seeds'
  held-out problems. arm: versus_sft.arm_config's name, e.g. 'dapo:16x8', 'rest_em:4096'."""
  root, controls = tuned_controls
  rewards, control_rewards = [], []
  for seed, (base, control) in controls.items():
    rewards.append(versus_sft.arm_rewards(arm, _versus_sft_config(root, seed), base))
    control_rewards.append(control)
    print(f'seed {seed}: {arm} {rewards[-1].mean():.3f} vs control {control.mean():.3f}')
  gain, se = versus_sft.paired(np.concatenate(rewards), np.concatenate(control_rewards))
  print(f'{arm} - tuned control, pooled over seeds: {gain:+.3f} (SE {se:.3f})')
  return gain, se


@pytest.mark.xdist_group('versus_sft')
def test_dapo_beats_tuned_continued_sft_at_equal_steps(tuned_controls):
  """DAPO on fresh problems scored by the verifier: over two seeds the paired held-out reward
  gain over the tuned control clears 2 standard errors."""
  gain, se = _gain_over_control(tuned_controls, 'dapo:16x8')
  assert gain > 2 * se, (gain, se)


@pytest.mark.xdist_group('versus_sft')
def test_rloo_with_dynamic_sampling_beats_tuned_continued_sft_at_equal_steps(tuned_controls):
  """RLOO's leave-one-out baseline and sequence-sum loss (configs/grpo_addition.py:rloo), its
  update filled with informative groups by DAPO's dynamic sampling: over two seeds the paired
  gain over the tuned control clears 2 standard errors. (At 16 problems a rollout without it,
  RLOO does not beat the control; at 64 it does, but ~3x slower.)"""
  gain, se = _gain_over_control(tuned_controls, 'rloo+ds:16x8')
  assert gain > 2 * se, (gain, se)


@pytest.mark.xdist_group('versus_sft')
def test_rest_em_beats_tuned_continued_sft_at_equal_steps(tuned_controls):
  """ReST-EM (configs/rest_em.py): two rounds of 4,096 fresh problems x 8 samples, each M-step
  fine-tuning the *base* for half the control's steps on the verified samples. Over two seeds
  the paired gain over the tuned control clears 2 standard errors. (With 1,024 problems a
  round it wins on seed 0 only: the kept samples are nearly all short strings.)"""
  gain, se = _gain_over_control(tuned_controls, 'rest_em:4096')
  assert gain > 2 * se, (gain, se)


def _judged(exp, policy, judge_params, problems, n: int = 4):
  """Per problem: (mean self-judge score, mean verified reward) of n samples of `policy`, the
  judge holding `judge_params`."""
  texts, _ = sampling.Sampler(exp.model, exp.mesh).generate(
      policy, exp.tokenizer, [p.prompt for p in problems], max_new_tokens=10,
      strategy=sampling.Temperature(1.0), n=n, seed=5)
  flat = [t for group in texts for t in group]
  scores = judge.judge_reward(exp.model, judge_params, exp.tokenizer, yes='y', no='n')(
      [p.prompt for p in problems for _ in range(n)], flat)
  verified = [exp.task.verify(p, c) for p, group in zip(problems, texts) for c in group]
  return scores.reshape(-1, n).mean(1), np.asarray(verified).reshape(-1, n).mean(1)


def test_grpo_learns_to_please_its_self_judge_and_the_monitor_flags_the_hack(weak_base, tmp_path):
  """GRPO on the policy's own verdict (`rl.reward='self_judge'`, no label): the base never learnt
  to judge, so its verdict is a proxy with no tie to correctness. The policy learns what pleases
  it (held-out judged reward up, under a fixed judge too), its verified reward falls, and
  `monitors.reward_hacking` names the hack. Measured here: judged +0.045 (SE 0.008) under the
  base's judge, verified 0.17 -> 0.09; with 256 problems and seeds 0 / 1 (20 / 12 iterations):
  +0.095 / +0.080 (SE 0.008), verified 0.18 -> 0.10 and 0.17 -> 0.08."""
  config = versus_sft.reverse_config(str(tmp_path), steps=24)  # 12 rollouts of 2 epochs
  config.init_from, config.rl.reward = weak_base, 'self_judge'
  exp, state = experiment.setup(config, 1)
  base = state.params
  online_rl.run(config)
  trained = experiment.load_params(config.workdir, exp.model.cfg, exp.shardings.params)
  problems = exp.task.sample([config.seed, 1], 128)
  judged_before, verified_before = _judged(exp, base, base, problems)
  judged_after, _ = _judged(exp, trained, base, problems)
  own_after, verified_after = _judged(exp, trained, trained, problems)  # What the loop optimised.
  exp.ckpt.close()
  gain, se = metrics.paired_change(judged_before, judged_after)
  print('self-judge GRPO: judged', gain, '+-', se, 'verified', verified_before.mean(), '->',
        verified_after.mean())
  assert gain > 3 * se, (gain, se)
  mean_se = lambda x: (float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))))
  hack = monitors.reward_hacking(mean_se(own_after), mean_se(judged_before), verified_before,
                                 verified_after)
  assert hack['flag'], hack['reason']

"""GRO really changes a model: DAPO raises the held-out verified reward of a weak SFT model
beyond what continued SFT at equal steps buys, and with the model's own (untrained) verdict as its
reward GRPO learns to please that judge instead, which the reward-hacking monitor catches. GRPO,
Dr. GRPO and RLOO beat the control only with 64 problems a rollout, ~150 s an arm
(experiments/rl/README.md), too slow for the suite, so no test claims they do.

Both start from the suite's weak base (tests/helpers.py: weak_base_config), as do the paradigm
tests; the DAPO test also builds a second seed's.
"""

import numpy as np

from experiments.rl import versus_sft
from si_jax import experiment, sampling
from si_jax.evaluation import metrics, monitors
from si_jax.optimization import judge, online_rl
from tests import helpers


# The suite's weak base has seen its 512 labelled problems 7.5 times (60 steps of 64): more SFT
# on them buys little, while DAPO keeps drawing fresh problems until every group of its update
# carries an advantage. Measured here (8 fake devices, 160 steps, each seed its own base), DAPO
# minus the better of continued SFT at LR 1e-3 / 3e-3: seed 0 +0.106 (SE 0.020), seed 1 +0.021
# (0.015), seed 2 +0.048 (0.018), seed 3 +0.084 (0.017). One seed can fall short of 2 SE (seed
# 1: 1.4), so the test pools two: seeds 0 + 1, +0.064 (5.1 SE). experiments/rl/README.md has
# the table.
VERSUS_SFT_STEPS = 160
VERSUS_SFT_SEEDS = (0, 1)


def test_dapo_beats_tuned_continued_sft_at_equal_steps(weak_base, tmp_path):
  """DAPO on fresh problems scored by the verifier vs the control a paper would run: the same
  number of optimizer steps of SFT on the base's own seed set, at the better of two LRs (picked
  per seed on the held-out score: an optimistic control). Over two seeds, each with its own
  base, the paired held-out reward gain clears 2 standard errors."""
  dapo, control = [], []
  for seed in VERSUS_SFT_SEEDS:
    base = weak_base if seed == 0 else helpers.build_weak_base(str(tmp_path), seed)
    config = lambda name: versus_sft.reverse_config(str(tmp_path / f'{name}_seed{seed}'), name,
                                                     seed, VERSUS_SFT_STEPS, seed_set=512)
    best, controls = versus_sft.tuned_continued_sft(config('grpo'), base, VERSUS_SFT_STEPS,
                                                    ['1e-3', '3e-3'])
    dapo.append(versus_sft.online_rl_rewards(config('dapo'), base))
    control.append(controls[best])
    print(f'seed {seed}: DAPO {dapo[-1].mean():.3f} vs', {k: v.mean() for k, v in controls.items()})
  gain, se = versus_sft.paired(np.concatenate(dapo), np.concatenate(control))
  print('DAPO vs tuned continued SFT, pooled over seeds', gain, se)
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

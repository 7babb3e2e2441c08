"""GRO really changes a model: the GRPO update raises the held-out verified reward of a weak SFT
model, and with the model's own (untrained) verdict as its reward it learns to please that judge
instead, which the reward-hacking monitor catches. Against continued SFT at equal steps no GRPO
variant wins reliably yet (experiments/rl/versus_sft.py and its README), so no test claims it.

Both start from the suite's weak base (tests/helpers.py: weak_base_config), as do the paradigm
tests.
"""

import ml_collections

from configs import grpo_addition
import numpy as np

from si_jax import experiment, sampling
from si_jax.evaluation import accuracy, metrics, monitors
from si_jax.optimization import judge, online_rl
from tests.helpers import data_parallel


def reverse_config(workdir: str) -> ml_collections.ConfigDict:
  """configs/grpo_addition.py moved to the weak base's task, string reversal, where it has room
  to grow."""
  c = grpo_addition.get_config()
  c.workdir = workdir
  c.task = ml_collections.ConfigDict({'name': 'reverse', 'letters': 'abcdefghij',
                                      'min_len': 1, 'max_len': 8})
  c.data.seq_len, c.rl.max_new_tokens = 20, 10
  c.rl.prompts_per_iteration, c.rl.group_size, c.rl.epochs = 16, 16, 2
  return data_parallel(c)


def test_grpo_raises_held_out_verified_reward(weak_base, tmp_path):
  config = reverse_config(str(tmp_path))
  config.init_from = weak_base
  config.rl.num_iterations, config.rl.eval_every = 60, 60
  # DAPO's token mean, as this test was tuned (measured from the shared weak base: 0.190 ->
  # 0.290); with GRPO's per-sequence mean an earlier base gained +0.028, under the margin
  # (experiments/rl/README.md compares the variants).
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
  config = reverse_config(str(tmp_path))
  config.init_from, config.rl.reward = weak_base, 'self_judge'
  config.rl.num_iterations = config.rl.eval_every = config.rl.checkpoint_every = 12
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

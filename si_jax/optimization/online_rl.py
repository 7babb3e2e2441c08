"""Online RL with GRPO and its variants: the GRO loop at its tightest (survey §4).

  python -m si_jax.main --config=configs/grpo_addition.py

Each iteration: draw fresh problems -> sample a group per problem (Generation) -> score the group
(Reward: the task's verifier, or majority vote with no labels) -> group advantages -> optional
reference / old-policy scoring passes -> `epochs` GRPO updates on the rollout (Optimization).
The objective itself lives in grpo.py.
"""

from __future__ import annotations

import functools

import numpy as np
import tqdm

from si_jax import experiment, metrics, sampling, sharding
from si_jax.evaluation import accuracy
from si_jax.optimization import grpo, judge, rewards, rollout, train_step

REWARDS = ('verifiable', 'majority', 'verifiable+format', 'self_judge')


def make_reward(name: str, task, group_size: int, exp=None) -> rewards.RewardFn:
  """A reward by config name. 'self_judge' (the model's own verdict-token probability, see
  judge.py) needs the experiment, and the tokenizer must hold the judge template's characters
  (config.tokenizer_extra_chars); the loop refreshes its `params` as the policy trains."""
  if name == 'self_judge':
    if exp is None:
      raise ValueError("config reward='self_judge' needs the model: pass exp to make_reward")
    return judge.judge_reward(exp.model, exp.state.params, exp.tokenizer, yes='y', no='n')
  if name == 'verifiable':
    return rewards.verifiable(task)
  if name == 'majority':
    return rewards.majority_vote(task, group_size)
  if name == 'verifiable+format':
    return rewards.combine((rewards.verifiable(task), 1.0), (rewards.format_reward(task), 0.1))
  raise ValueError(f'config.rl.reward={name!r} not in {REWARDS}')


def fill_groups(rewards_GxN: np.ndarray, size: int) -> np.ndarray:
  """DAPO's dynamic sampling: `size` groups of the pool, informative ones (rewards not all equal)
  first; if too few, uninformative ones fill the shape and get masked out by build_batch."""
  informative = grpo.dynamic_sampling_keep(rewards_GxN)
  order = np.concatenate([np.nonzero(informative)[0], np.nonzero(~informative)[0]])
  return order[:size]


def grpo_config(rl) -> grpo.GRPOConfig:
  return grpo.GRPOConfig(beta=rl.beta, kl_estimator=rl.kl_estimator, eps_low=rl.eps_low,
                         eps_high=rl.eps_high, aggregation=rl.aggregation,
                         max_completion_len=rl.max_new_tokens)


def build_batch(ro: rollout.Rollout, reward: np.ndarray, rl) -> tuple[dict, dict]:
  """Advantages and masks for one rollout; returns (batch, host metrics)."""
  g = ro.group_size
  if not np.all(np.isfinite(reward)):
    bad = np.flatnonzero(~np.isfinite(reward))
    raise ValueError(f'config.rl.reward={rl.reward!r} returned {bad.size} non-finite rewards '
                     f'(NaN/inf, e.g. sample {bad[0]}): advantages would be NaN and so would every '
                     f'parameter. Make the reward function return finite numbers (clip it or map '
                     f'failures to 0)')
  rewards_GxN = reward.reshape(-1, g)
  estimator = grpo.ADVANTAGE_ESTIMATORS[rl.advantage_estimator]
  advantages = np.asarray(estimator(rewards_GxN, rl.std_scale)).reshape(-1)
  mask = ro.arrays['completion_mask']
  if rl.mask_overlong:
    mask = grpo.overlong_mask(mask, ro.finish_reason)
  informative = grpo.dynamic_sampling_keep(rewards_GxN)
  if rl.dynamic_sampling:  # DAPO: groups with equal rewards carry no signal; drop their tokens.
    mask = mask & np.repeat(informative, g)[:, None]
  batch = {**ro.arrays, 'completion_mask': mask, 'advantages': advantages.astype(np.float32)}
  host = {'reward_mean': float(reward.mean()), 'reward_std': float(reward.std()),
          'advantage_mean': float(advantages.mean()),
          'advantage_abs': float(np.abs(advantages).mean()),
          'informative_groups': float(informative.mean()), 'tokens': float(mask.sum())}
  return batch, host


def run(config) -> dict:
  """GRPO per `config.rl` (see configs/grpo_addition.py); returns the final metrics."""
  rl = config.rl
  cfg = grpo_config(rl)
  if cfg.beta > 0 and not config.init_from:
    raise ValueError('config.rl.beta > 0 needs a reference model: set config.init_from to the '
                     'warm-start run (its params are the frozen reference), or beta=0')
  # --- Setup: model, tokenizer, sharded state (warm-started from init_from) ---
  exp = experiment.setup(config, rl.num_iterations * rl.epochs)
  model, tokenizer, task, mesh = exp.model, exp.tokenizer, exp.task, exp.mesh
  sampler = sampling.Sampler(model, mesh)
  reward_fn = make_reward(rl.reward, task, rl.group_size, exp)
  step_fn = train_step.jit_train_step(train_step.make_train_step(
      functools.partial(grpo.grpo_loss, model, cfg=cfg), exp.tx, exp.schedule,
      config.optimizer.grad_accum_steps), exp.shardings, mesh)
  ref_params = None
  if cfg.beta > 0:  # Frozen: restored once, passed as an argument to scoring, never copied.
    ref_params = experiment.load_params(config.init_from, model.cfg, exp.shardings.params)
  score = functools.partial(sampling.score_tokens, model)
  eval_problems = task.sample([config.seed, 1], config.train.eval_size)
  strategy = sampling.Temperature(rl.temperature)

  # --- Generate -> reward -> optimize ---
  start = exp.meta.get('iteration', 0) if exp.resumed else 0
  state, result = exp.state, {}
  bar = tqdm.trange(start, rl.num_iterations, initial=start, total=rl.num_iterations, desc='grpo')
  try:
    for it in bar:
      pool = rl.prompts_per_iteration * (rl.oversample if rl.dynamic_sampling else 1)
      problems = task.sample([config.seed, 2, it], pool)
      ro = rollout.rollout(sampler, state.params, tokenizer, problems, group_size=rl.group_size,
                           max_new_tokens=rl.max_new_tokens, strategy=strategy,
                           seed=config.seed * 1_000_003 + it * pool)
      if isinstance(reward_fn, judge.SelfJudge):
        reward_fn.params = state.params  # The judge is the current policy.
      reward = reward_fn(ro.prompts, ro.completions, answers=ro.answers)
      if rl.dynamic_sampling:  # DAPO: fill the batch with informative groups from the pool.
        groups = fill_groups(reward.reshape(-1, rl.group_size), rl.prompts_per_iteration)
        ro = ro.take_groups(groups)
        reward = reward.reshape(-1, rl.group_size)[groups].reshape(-1)
        problems = ro.problems
      batch, host = build_batch(ro, reward, rl)
      host['verified'] = float(np.mean([task.verify(p, c) for p, c in zip(
          [p for p in problems for _ in range(rl.group_size)], ro.completions)]))
      args = lambda b: (b['prompt'], b['prompt_mask'], b['completion'], b['completion_mask'])
      if cfg.beta > 0:
        batch['ref_logprobs'] = np.asarray(score(ref_params, *args(batch))[0])
      if rl.epochs > 1:  # pi_old: the policy that sampled, scored exactly once per rollout.
        batch['old_logprobs'] = np.asarray(score(state.params, *args(batch))[0])
      device_batch = sharding.shard_batch(batch, mesh)
      for _ in range(rl.epochs):
        state, step_metrics = step_fn(state, device_batch)
      logged = {**metrics.to_python(step_metrics), **host}
      if (it + 1) % rl.eval_every == 0 or it + 1 == rl.num_iterations:
        logged['eval_accuracy'], _ = accuracy.greedy_accuracy(
            model, state.params, tokenizer, task, eval_problems, rl.max_new_tokens)
        logged['eval_reward'] = accuracy.sampled_reward(
            sampler, state.params, tokenizer, task, eval_problems, n=rl.eval_samples,
            max_new_tokens=rl.max_new_tokens, strategy=strategy, seed=config.seed)
        result = {'iteration': it + 1, 'eval_accuracy': logged['eval_accuracy'],
                  'eval_reward': logged['eval_reward']}
      exp.writer.write(it + 1, logged)
      bar.set_postfix(reward=f"{host['reward_mean']:.3f}", verified=f"{host['verified']:.3f}")
      if (it + 1) % rl.checkpoint_every == 0 or it + 1 == rl.num_iterations:
        exp.state = state
        exp.save(int(state.step), iteration=it + 1)
  finally:
    exp.ckpt.close()
  exp.state = state
  if result:
    print(f"GRPO after {result['iteration']} iterations: held-out greedy accuracy "
          f"{result['eval_accuracy']:.1%}, mean sampled reward {result['eval_reward']:.3f}")
  return result

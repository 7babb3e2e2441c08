"""Online RL with GRPO and its variants: the GRO loop at its tightest (survey §4).

  python -m si_jax.main --config=configs/grpo_addition.py

Each iteration: draw fresh problems -> sample a group per problem (Generation) -> score the group
(Reward: the task's verifier, or majority vote with no labels) -> group advantages -> optional
reference / old-policy scoring passes -> `epochs` GRPO updates on the rollout (Optimization).
The objective lives in grpo.py, the update of a rollout (shared with TTRL) in grpo_update.py.
"""

from __future__ import annotations

import numpy as np
import tqdm

from si_jax import experiment, sampling
from si_jax.evaluation import accuracy
from si_jax.optimization import grpo_update, judge, rewards, rollout


def run(config) -> dict:
  """GRPO per `config.rl` (see configs/grpo_addition.py); returns the final metrics."""
  rl = grpo_update.RLConfig.from_config(config.rl)
  if rl.beta > 0 and not config.init_from:
    raise ValueError('config.rl.beta > 0 needs a reference model: set config.init_from to the '
                     'warm-start run (its params are the frozen reference), or beta=0')
  # --- Setup: model, tokenizer, sharded state (warm-started from init_from) ---
  exp, state = experiment.setup(config, rl.num_iterations * rl.epochs)
  model, tokenizer, task, mesh = exp.model, exp.tokenizer, exp.task, exp.mesh
  sampler = sampling.Sampler(model, mesh)
  reward_fn = rewards.make_reward(rl.reward, task, group_size=rl.group_size, exp=exp,
                                  params=state.params)
  step_fn = grpo_update.make_step(exp, rl)
  ref_params = None
  if rl.beta > 0:  # Frozen: restored once, passed as an argument to scoring, never copied.
    ref_params = experiment.load_params(config.init_from, model.cfg, exp.shardings.params)
  eval_problems = task.sample([config.seed, 1], config.train.eval_size)
  strategy = sampling.Temperature(rl.temperature)

  # --- Generate -> reward -> optimize ---
  start = exp.meta.get('iteration', 0) if exp.resumed else 0
  result = {}
  bar = tqdm.trange(start, rl.num_iterations, initial=start, total=rl.num_iterations, desc='grpo')
  try:
    for it in bar:
      n = rl.prompts_per_iteration

      def draw(attempt, batches, it=it, n=n, params=state.params):  # attempt > 0: DAPO refills.
        problems = task.sample([config.seed, 2, it] + ([attempt] if attempt else []), n * batches)
        ro = rollout.rollout(sampler, params, tokenizer, problems, group_size=rl.group_size,
                             max_new_tokens=rl.max_new_tokens, strategy=strategy,
                             seed=config.seed * 1_000_003 + it * n + attempt * 7919)
        reward = judge.with_params(reward_fn, params)  # A self-judge is the current policy.
        return ro, reward(ro.prompts, ro.completions, answers=ro.answers)

      ro, reward, host = grpo_update.collect(draw, rl)
      host['verified'] = float(np.mean([task.verify(p, c) for p, c in zip(
          [p for p in ro.problems for _ in range(rl.group_size)], ro.completions)]))
      state, logged = grpo_update.update(exp, step_fn, state, ro, reward, rl, ref_params)
      logged.update(host)
      if (it + 1) % rl.eval_every == 0 or it + 1 == rl.num_iterations:
        logged['eval_accuracy'], _ = accuracy.greedy_accuracy(
            model, state.params, tokenizer, task, eval_problems, rl.max_new_tokens)
        logged['eval_reward'] = accuracy.sampled_reward(
            sampler, state.params, tokenizer, task, eval_problems, n=rl.eval_samples,
            max_new_tokens=rl.max_new_tokens, strategy=strategy, seed=config.seed)
        result = {'iteration': it + 1, 'eval_accuracy': logged['eval_accuracy'],
                  'eval_reward': logged['eval_reward']}
      exp.writer.write(it + 1, logged)
      bar.set_postfix(reward=f"{logged['reward_mean']:.3f}", verified=f"{host['verified']:.3f}")
      if (it + 1) % rl.checkpoint_every == 0 or it + 1 == rl.num_iterations:
        exp.save(int(state.step), state, iteration=it + 1)
  finally:
    exp.ckpt.close()
  if result:
    print(f"GRPO after {result['iteration']} iterations: held-out greedy accuracy "
          f"{result['eval_accuracy']:.1%}, mean sampled reward {result['eval_reward']:.3f}")
  return result

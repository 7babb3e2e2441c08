"""Iterative rejection sampling: STaR (2203.14465), ReST-EM (2312.06585), RFT (survey §4).

  python -m si_jax.main --config=configs/rejection_sampling.py

Each round: sample k answers per fresh problem (Generation) -> keep the ones the reward accepts
(Reward: the task's verifier, or agreement with the group's majority answer when no labels are
allowed) -> SFT on the kept answers (Optimization). Options:
  * STaR rationalization: for problems with no accepted sample, show the answer as a hint
    (`answer\\nprompt`), sample again, and keep accepted answers *without* the hint;
  * ReST-EM restarts each round's SFT from the base model instead of the previous round.
"""

from __future__ import annotations

import numpy as np

from si_jax import experiment, sampling
from si_jax.optimization import rewards, rollout, rounds


def select(ro: rollout.Rollout, reward: np.ndarray, threshold: float, per_problem: int):
  """Up to per_problem distinct accepted completions per problem: (prompts, completions)."""
  prompts, completions = [], []
  g = ro.group_size
  for b, problem in enumerate(ro.problems):
    kept = []
    for j in range(g):
      text = ro.completions[b * g + j]
      if reward[b * g + j] >= threshold and text not in kept and len(kept) < per_problem:
        kept.append(text)
    prompts += [problem.prompt] * len(kept)
    completions += kept
  return prompts, completions


def run(config) -> dict:
  gro = config.gro
  exp = experiment.setup(config, gro.num_rounds * gro.sft_steps)
  sampler = sampling.Sampler(exp.model, exp.mesh)
  reward_fn = rewards.make_reward(gro.reward, exp.task, group_size=gro.group_size,
                                  key='config.gro.reward')
  step_fn = rounds.sft_step(exp)
  base_params = rounds.frozen_copy(exp.state.params) if gro.restart_from_base else None
  strategy = sampling.Temperature(gro.temperature)
  try:
    tracker = rounds.RoundTracker(exp, gro.max_new_tokens)
    for r in range(tracker.start, gro.num_rounds):
      # --- Generate and reward ---
      problems = exp.task.sample([config.seed, 3, r], gro.problems_per_round)
      ro = rollout.rollout(sampler, exp.state.params, exp.tokenizer, problems,
                           group_size=gro.group_size, max_new_tokens=gro.max_new_tokens,
                           strategy=strategy, seed=config.seed * 7919 + r)
      reward = reward_fn(ro.prompts, ro.completions, answers=ro.answers)
      prompts, completions = select(ro, reward, gro.accept_threshold, gro.keep_per_problem)
      logged = {'reward_mean': float(reward.mean()), 'kept': len(prompts)}
      if gro.rationalize:  # STaR: hint failures with their answer, keep the hint-free pair.
        solved = {p for p in prompts}
        failed = [p for p in problems if p.prompt not in solved]
        if failed:
          hinted = [type(p)(f'{p.answer}\n{p.prompt}', p.answer, p.difficulty) for p in failed]
          ro_hint = rollout.rollout(sampler, exp.state.params, exp.tokenizer, hinted,
                                    group_size=gro.group_size, max_new_tokens=gro.max_new_tokens,
                                    strategy=strategy, seed=config.seed * 7919 + r + 1)
          hint_reward = reward_fn(ro_hint.prompts, ro_hint.completions, answers=ro_hint.answers)
          h_prompts, h_completions = select(ro_hint, hint_reward, gro.accept_threshold, 1)
          prompts += [h.split('\n', 1)[1] for h in h_prompts]
          completions += h_completions
          logged['rationalized'] = len(h_prompts)
      # --- Optimize: SFT on the accepted answers ---
      if base_params is not None:
        exp.state = exp.state.replace(params=rounds.frozen_copy(base_params))
      if prompts:
        logged.update(rounds.train_sft(exp, step_fn, prompts, completions,
                                       num_steps=gro.sft_steps, batch_size=gro.batch_size,
                                       seed=config.seed * 31 + r, max_epochs=gro.max_epochs))
      tracker.end_round(r, logged, f"kept {logged['kept']} answers, ")
  finally:
    exp.ckpt.close()
  return tracker.result

"""Iterative rejection sampling: STaR (2203.14465), ReST-EM (2312.06585), RFT (survey §4).

  python -m si_jax.main --config=configs/star.py      # STaR on multiplication with written steps
  python -m si_jax.main --config=configs/rest_em.py   # ReST-EM
  python -m si_jax.main --config=configs/rejection_sampling.py  # RFT: no restarts

Each round: sample k answers per fresh problem (Generation, the E-step) -> keep the ones the
reward accepts (the task's verifier, or agreement with the group's majority when no labels are
allowed) -> SFT on the kept answers (Optimization, the M-step). Fidelity flags (config.gro):
  * restart_from_base (STaR Alg. 1, ReST-EM §3: True): each round's SFT fine-tunes the *base*
    model on this round's data, not the previous round's model; samples still come from the
    latest model. With restart_optimizer (default True, the papers' form) the restart is a fresh
    fine-tuning run — Adam moments at zero and step 0, so the warmup runs again; False keeps the
    optimizer state and step across rounds (only the params restart).
  * rationalize (STaR §3.2): a problem with no accepted sample is retried with its *final*
    answer as a hint (config.data.hint_template, e.g. '{answer}|{prompt}'); a hinted sample that
    reaches that answer is kept with the prompt *without* the hint, and with the rationale the
    model wrote (on a chain-of-thought task, e.g. `multiplication_cot`, the written partial
    products). The written steps are never given: the hint is `task.final_answer(answer)`.
    The model learns to use a hint from hinted exemplars in its base phase
    (config.data.hint_fraction), as STaR's few-shot rationalization prompt shows hinted examples.
"""

from __future__ import annotations

import dataclasses
import string

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


def check_hint_template(config, tokenizer) -> str:
  """config.data.hint_template, checked: both fields, and every literal character known."""
  template = config.data.hint_template
  fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
  if fields != {'answer', 'prompt'}:
    raise ValueError(f'config.data.hint_template={template!r} must have exactly the fields '
                     f'{{answer}} and {{prompt}}, e.g. "{{answer}}|{{prompt}}"')
  literal = ''.join(text for text, _, _, _ in string.Formatter().parse(template))
  missing = [c for c in literal if tokenizer.unk_id in tokenizer.encode(c)]
  if missing:
    raise ValueError(f'config.data.hint_template has characters {missing} the tokenizer does not '
                     f'know: add them to config.tokenizer_extra_chars')
  return template


def rationalize(exp, sampler, params, reward_fn, problems, solved: set[str], *, template: str,
                gro, strategy, seed: int):
  """STaR rationalization of the unsolved problems: (prompts without the hint, rationales)."""
  failed = [p for p in problems if p.prompt not in solved]
  if not failed:
    return [], []
  hinted = [dataclasses.replace(p, prompt=exp.task.hinted_prompt(p, template)) for p in failed]
  ro = rollout.rollout(sampler, params, exp.tokenizer, hinted,
                       group_size=gro.group_size, max_new_tokens=gro.max_new_tokens,
                       strategy=strategy, seed=seed)
  reward = reward_fn(ro.prompts, ro.completions, answers=ro.answers)
  hinted_prompts, rationales = select(ro, reward, gro.accept_threshold, 1)
  plain = {h.prompt: p.prompt for h, p in zip(hinted, failed)}
  return [plain[h] for h in hinted_prompts], rationales


def run(config) -> dict:
  gro = config.gro
  restarts = gro.restart_from_base and gro.restart_optimizer
  # A restarted round is a whole fine-tuning run: its schedule spans one round's steps.
  exp, state = experiment.setup(config,
                                gro.sft_steps if restarts else gro.num_rounds * gro.sft_steps)
  sampler = sampling.Sampler(exp.model, exp.mesh)
  reward_fn = rewards.make_reward(gro.reward, exp.task, group_size=gro.group_size,
                                  key='config.gro.reward')
  step_fn = rounds.sft_step(exp)
  template = check_hint_template(config, exp.tokenizer) if gro.rationalize else ''
  if gro.rationalize and gro.reward != 'verifiable':
    raise ValueError(f'config.gro.rationalize=True needs config.gro.reward=verifiable (a hint '
                     f'is the reference answer), got {gro.reward!r}')
  base = rounds.base_params(exp, state) if gro.restart_from_base else None
  restart = rounds.restarter(exp) if restarts else None
  strategy = sampling.Temperature(gro.temperature)
  try:
    tracker = rounds.RoundTracker(exp, state.params, gro.max_new_tokens)
    for r in range(tracker.start, gro.num_rounds):
      # --- E-step: generate with the latest model and keep what the reward accepts ---
      problems = exp.task.sample([config.seed, 3, r], gro.problems_per_round)
      ro = rollout.rollout(sampler, state.params, exp.tokenizer, problems,
                           group_size=gro.group_size, max_new_tokens=gro.max_new_tokens,
                           strategy=strategy, seed=config.seed * 7919 + r)
      reward = reward_fn(ro.prompts, ro.completions, answers=ro.answers)
      prompts, completions = select(ro, reward, gro.accept_threshold, gro.keep_per_problem)
      logged = {'reward_mean': float(reward.mean()), 'kept': len(prompts)}
      if gro.rationalize:
        r_prompts, rationales = rationalize(exp, sampler, state.params, reward_fn, problems,
                                            set(prompts), template=template, gro=gro,
                                            strategy=strategy, seed=config.seed * 7919 + r + 1)
        prompts, completions = prompts + r_prompts, completions + rationales
        logged['rationalized'] = len(r_prompts)
      # --- M-step: SFT on the accepted answers (from the base, for STaR / ReST-EM) ---
      if restart is not None:
        state = restart(state, base)
      elif base is not None:
        state = state.replace(params=rounds.frozen_copy(base))
      if prompts:
        state, sft_metrics = rounds.train_sft(
            exp, step_fn, state, prompts, completions, num_steps=gro.sft_steps,
            batch_size=gro.batch_size, seed=config.seed * 31 + r, max_epochs=gro.max_epochs)
        logged.update(sft_metrics)
      logged['step'] = int(state.step)
      tracker.end_round(r, state, logged, f"kept {logged['kept']} answers, ")
  finally:
    exp.ckpt.close()
  return tracker.result

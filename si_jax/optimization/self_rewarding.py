"""Self-rewarding: the model judges its own candidates and learns from the pairs with DPO
(Yuan et al. 2024, 2401.10020; survey §4 self-verification paradigm).

  python -m si_jax.main --config=configs/self_rewarding.py

Before the rounds, evaluation fine-tuning (EFT) teaches the model to judge from the labelled seed
set: judge prompts (problem + a correct or a wrong answer) -> 'y' / 'n', mixed with answering
examples (IFT) so judging does not displace answering. Each round then: sample
candidates per fresh problem -> score each with the model's own verdict probability -> the best
and worst candidate of a problem form a preference pair when their scores differ enough -> DPO
against the round-start model as reference. The verifier is never used for training after EFT;
it only measures the judge's agreement (judge drift) and held-out accuracy.
"""

from __future__ import annotations

import numpy as np

from si_jax import experiment, sampling
from si_jax.evaluation import monitors
from si_jax.optimization import judge, preference, rewards, rollout, rounds


def judge_examples(problems, rng: np.random.Generator, template: str, yes: str, no: str):
  """EFT data: each problem with its answer (-> yes) or another problem's answer (-> no)."""
  prompts, verdicts = [], []
  for p in problems:
    wrong = problems[int(rng.integers(len(problems)))].answer
    candidate = p.answer if rng.random() < 0.5 or wrong == p.answer else wrong
    prompts.append(template.format(prompt=p.prompt, completion=candidate))
    verdicts.append(yes if candidate == p.answer else no)
  return prompts, verdicts


def best_worst_pairs(ro: rollout.Rollout, scores: np.ndarray, min_gap: float):
  """Per problem: (prompt, highest-scored, lowest-scored) candidates if their gap >= min_gap."""
  g, pairs = ro.group_size, []
  for b, problem in enumerate(ro.problems):
    s = scores[b * g:(b + 1) * g]
    hi, lo = int(np.argmax(s)), int(np.argmin(s))
    chosen, rejected = ro.completions[b * g + hi], ro.completions[b * g + lo]
    if s[hi] - s[lo] >= min_gap and chosen != rejected:
      pairs.append((problem.prompt, chosen, rejected))
  return pairs


def run(config) -> dict:
  gro = config.gro
  pref_cfg = preference.PreferenceConfig(loss=gro.loss, beta=gro.beta,
                                         label_smoothing=gro.label_smoothing)
  exp = experiment.setup(config, gro.judge_sft_steps + gro.num_rounds * gro.dpo_steps)
  sampler = sampling.Sampler(exp.model, exp.mesh)
  self_judge = judge.judge_reward(exp.model, exp.state.params, exp.tokenizer, yes=gro.judge_yes,
                                  no=gro.judge_no)
  verifier = rewards.verifiable(exp.task)
  dpo_step = rounds.preference_step(exp, pref_cfg)
  start = exp.meta.get('round', 0) if exp.resumed else 0
  try:
    if start == 0:  # --- IFT + EFT: learn to judge from the labelled seed set, keep answering ---
      seed_problems = exp.task.sample([config.seed, 4], gro.judge_seed_size)
      prompts, verdicts = judge_examples(seed_problems, np.random.default_rng(config.seed),
                                         judge.JUDGE_TEMPLATE, gro.judge_yes, gro.judge_no)
      prompts += [p.prompt for p in seed_problems]  # Answering data too, as Yuan et al. mix
      verdicts += [p.answer for p in seed_problems]  # IFT with EFT: judging alone forgets it.
      rounds.train_sft(exp, rounds.sft_step(exp), prompts, verdicts,
                       num_steps=gro.judge_sft_steps, batch_size=gro.batch_size, seed=config.seed,
                       max_epochs=gro.max_epochs)
    tracker = rounds.RoundTracker(exp, gro.max_new_tokens)  # measured after EFT
    for r in range(tracker.start, gro.num_rounds):
      # --- Generate candidates and judge them with the model itself ---
      reference = rounds.frozen_copy(exp.state.params)
      self_judge.params = exp.state.params
      problems = exp.task.sample([config.seed, 5, r], gro.problems_per_round)
      ro = rollout.rollout(sampler, exp.state.params, exp.tokenizer, problems,
                           group_size=gro.group_size, max_new_tokens=gro.max_new_tokens,
                           strategy=sampling.Temperature(gro.temperature),
                           seed=config.seed * 7919 + r)
      scores = self_judge(ro.prompts, ro.completions)
      verified = verifier(ro.prompts, ro.completions, answers=ro.answers)  # monitoring only
      logged = {f'judge_{k}': v for k, v in judge.agreement(scores, verified).items()}
      pairs = best_worst_pairs(ro, scores, gro.min_score_gap)
      logged.update(pairs=len(pairs), verified_mean=float(verified.mean()))
      # --- Optimize: DPO on the self-judged pairs ---
      if pairs:
        p, c, rj = map(list, zip(*pairs))
        logged.update(rounds.train_preference(
            exp, dpo_step, pref_cfg, reference, p, c, rj, width=gro.max_new_tokens + 1,
            num_steps=gro.dpo_steps, batch_size=gro.batch_size, seed=config.seed * 31 + r,
            max_epochs=gro.max_epochs))
      # --- Judge drift: does the self-judge still agree with the verifier? (report only) ---
      judge_history = [*exp.meta.get('judge_history', []), logged['judge_accuracy']]
      exp.meta['judge_history'] = judge_history  # Saved with the round's checkpoint.
      drift = monitors.judge_drift(judge_history)
      logged['judge_drift_flag'] = drift['flag']
      tracker.result[f'round_{r + 1}_judge_accuracy'] = logged['judge_accuracy']
      tracker.result[f'round_{r + 1}_judge_drift'] = drift['flag']
      tracker.end_round(r, logged, f"{len(pairs)} pairs, judge agrees with the verifier on "
                                   f"{logged['judge_accuracy']:.1%} ({drift['reason']}), ")
  finally:
    exp.ckpt.close()
  return tracker.result

"""Self-play fine-tuning, SPIN (Chen et al. 2024, 2401.01335; survey §4 self-play paradigm).

  python -m si_jax.main --config=configs/spin.py

The model plays against its previous self: each round, for problems of the SFT data (prompt and
reference answer), the previous iteration's model writes its own answer; the new model learns to
prefer the reference answer over that self-generated one with SPIN's logistic loss, the previous
iteration serving as the reference model. It stops gaining once its answers are
indistinguishable from the reference ones.

Fidelity flag (config.gro):
  * fixed_sft_set (SPIN §4, Algorithm 1: True): every iteration plays on the *same* SFT data —
    the labelled seed set the base was fine-tuned on (config.data.seed_set_size; its first
    gro.problems_per_round examples), so no label beyond the SFT set is ever read. False draws
    fresh labelled problems each round (more labels than SPIN uses; a looser baseline).
"""

from __future__ import annotations

from si_jax import experiment, sampling
from si_jax.optimization import preference, rollout, rounds


def sft_set(config, task) -> list:
  """SPIN's real data: the base's labelled seed set (its training split), the same every round."""
  if not config.data.seed_set_size:
    raise ValueError('SPIN plays on the fixed SFT set: set config.data.seed_set_size > 0 (the '
                     'labelled seed set of the base phase), or config.gro.fixed_sft_set=False')
  problems = experiment.seed_split(config, task)[0]
  return problems[:config.gro.problems_per_round]


def run(config) -> dict:
  gro = config.gro
  pref_cfg = preference.PreferenceConfig(loss='spin', beta=gro.beta, nll_weight=gro.nll_weight)
  exp, state = experiment.setup(config, gro.num_rounds * gro.spin_steps)
  sampler = sampling.Sampler(exp.model, exp.mesh)
  spin_step = rounds.preference_step(exp, pref_cfg)
  strategy = (sampling.Greedy() if gro.temperature == 0
              else sampling.Temperature(gro.temperature))
  fixed = sft_set(config, exp.task) if gro.fixed_sft_set else None
  try:
    tracker = rounds.RoundTracker(exp, state.params, gro.max_new_tokens)
    for r in range(tracker.start, gro.num_rounds):
      # --- The previous iteration answers the SFT data's prompts ---
      previous = rounds.frozen_copy(state.params)
      problems = fixed or exp.task.sample([config.seed, 0, 10_000 + r], gro.problems_per_round)
      ro = rollout.rollout(sampler, previous, exp.tokenizer, problems, group_size=1,
                           max_new_tokens=gro.max_new_tokens, strategy=strategy,
                           seed=config.seed * 7919 + r)
      pairs = [(p.prompt, p.answer, own) for p, own in zip(problems, ro.completions)
               if own != p.answer]
      logged = {'pairs': len(pairs), 'own_equals_reference': 1 - len(pairs) / len(problems)}
      # --- Optimize: prefer the reference answer over the previous self's ---
      if pairs:
        p, ref_answers, own = map(list, zip(*pairs))
        state, pref_metrics = rounds.train_preference(
            exp, spin_step, state, pref_cfg, previous, p, ref_answers, own,
            width=gro.max_new_tokens + 1, num_steps=gro.spin_steps, batch_size=gro.batch_size,
            seed=config.seed * 31 + r, max_epochs=gro.max_epochs)
        logged.update(pref_metrics)
      tracker.result[f'round_{r + 1}_margin'] = logged.get('margin', 0.0)
      tracker.end_round(r, state, logged, f'{len(pairs)} pairs, ')
  finally:
    exp.ckpt.close()
  return tracker.result

"""Self-rewarding (Yuan et al. 2024): the model judges its own candidates; DPO on the pairs.

Launch (a couple of minutes on a 2-core CPU):
  python -m si_jax.main --config=configs/self_rewarding.py
Same task, model and base phase as configs/rejection_sampling.py.
"""

import ml_collections

from configs import rejection_sampling


def get_config() -> ml_collections.ConfigDict:
  c = rejection_sampling.get_config()
  c.job = 'self_rewarding'
  c.workdir = '/tmp/si_jax/self_rewarding'
  # The judge templates' characters, the verdicts (0-5 scores or y/n) and the self-instruct prefix.
  c.tokenizer_extra_chars = '|ok?ynpts012345w'

  c.gro = ml_collections.ConfigDict()
  c.gro.num_rounds = 3  # Generate -> self-judge -> DPO rounds.
  c.gro.problems_per_round = 256  # Fresh problems per round.
  c.gro.group_size = 4  # Candidates per problem.
  c.gro.max_new_tokens = 10  # Completion budget.
  c.gro.temperature = 1.0  # Sampling temperature of candidates.
  c.gro.judge = 'additive'  # The 5-point additive judge (paper); 'binary': a y/n verdict.
  c.gro.judge_accept = 4.5  # Additive scores >= this count as "correct" (agreement reports only).
  c.gro.judge_negatives = 'policy'  # EFT negatives: the policy's own answers; or 'shuffled'.
  c.gro.judge_samples = 2  # Policy samples per seed problem judged in the EFT data.
  c.gro.prompts = 'self_instruct'  # Round prompts written by the model; 'task': drawn fresh.
  c.gro.instruct_prefix = '|new?'  # What precedes a prompt the model writes.
  c.gro.instruct_oversample = 2  # Prompts sampled per prompt kept (duplicates are dropped).
  c.gro.judge_yes = 'y'  # Verdict token for a correct answer.
  c.gro.judge_no = 'n'  # Verdict token for a wrong one.
  c.gro.judge_seed_size = 512  # Seed-set problems of the M1 phase (IFT, EFT, self-instruct).
  c.gro.judge_sft_steps = 150  # EFT steps before the first round.
  c.gro.min_score_gap = 0.5  # A pair needs this gap between the judge's (0-5) scores.
  c.gro.loss = 'dpo'  # Preference loss: 'dpo', 'ipo', 'simpo'.
  c.gro.beta = 0.1  # β of the preference loss.
  c.gro.label_smoothing = 0.0  # ε of conservative DPO.
  c.gro.nll_weight = 0.0  # α of Iterative RPO's NLL term on the chosen answer (0: pure DPO).
  c.gro.dpo_steps = 30  # DPO steps per round.
  c.gro.max_epochs = 2.0  # Cap on passes over a round's data (pairs overfit quickly).
  c.gro.batch_size = 32  # Pairs (or EFT examples) per step.
  c.model.vocab_size = 40
  c.optimizer.learning_rate = 3e-4  # DPO rounds and EFT.
  c.data.seq_len = 28  # Judge prompts: bos + problem + answer + '|ok?' + verdict + eos.
  return c

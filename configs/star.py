"""STaR (Zelikman et al. 2022): rationales for multiplication, with rationalization.

Launch (a few minutes on a 2-core CPU):
  python -m si_jax.main --config=configs/star.py
Task `multiplication_cot`: the completion writes the partial products (each reversed, joined by
'+'), then '#' and the product; only the product is verified. Base phase: SFT on a fixed seed
set, a fraction of it with the product as a hint (`{answer}|{prompt}`), STaR's hinted few-shot
exemplars. Rounds: sample rationales for fresh problems, keep those reaching the right product;
for a problem with none, sample again with the product as the hint and keep that rationale with
the hint-free prompt; fine-tune the base model afresh on all of them (Algorithm 1).
"""

import ml_collections

from configs import rejection_sampling


def get_config() -> ml_collections.ConfigDict:
  c = rejection_sampling.get_config()
  c.job = 'rejection_sampling'
  c.workdir = '/tmp/si_jax/star'
  c.tokenizer_extra_chars = '|'  # The hint separator.

  c.task = ml_collections.ConfigDict()
  c.task.name = 'multiplication_cot'  # Partial products, then '#' and the product.
  c.task.min_digits = 1  # Digits of the longer factor, from ...
  c.task.max_digits = 2  # ... to.

  c.data.seq_len = 32  # bos + hinted prompt (<= 11) + rationale and product (<= 14) + eos.
  c.data.seed_set_size = 1024  # The labelled seed set: the only labels of the run.
  c.data.hint_fraction = 0.25  # Base examples shown with the product as a hint.
  c.data.hint_template = '{answer}|{prompt}'  # Where the hint goes ({answer}: the product only).

  c.train.num_steps = 300  # Base phase.

  c.gro.num_rounds = 3  # Outer iterations.
  c.gro.problems_per_round = 512  # Fresh (unlabelled) problems per round.
  c.gro.max_new_tokens = 16  # Rationale and product.
  c.gro.rationalize = True  # Retry failures with the product as a hint.
  c.gro.restart_from_base = True  # Each iteration fine-tunes the base model (Algorithm 1).
  c.gro.restart_optimizer = True  # ... as a fresh run: new optimizer state and step.
  c.gro.sft_steps = 60  # SFT steps per iteration.
  c.model.vocab_size = 32
  return c

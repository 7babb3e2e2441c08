"""SPIN (Chen et al. 2024): prefer reference answers over the previous iteration's own answers.

Launch (a couple of minutes on a 2-core CPU):
  python -m si_jax.main --config=configs/spin.py
Same task, model and base phase as configs/rejection_sampling.py.
"""

import ml_collections

from configs import rejection_sampling


def get_config() -> ml_collections.ConfigDict:
  c = rejection_sampling.get_config()
  c.job = 'spin'
  c.workdir = '/tmp/si_jax/spin'

  c.gro = ml_collections.ConfigDict()
  c.gro.num_rounds = 3  # Self-play iterations.
  c.gro.fixed_sft_set = True  # The same SFT data (the base's seed set) every iteration.
  c.gro.problems_per_round = 512  # Seed-set examples answered by the previous iteration.
  c.gro.max_new_tokens = 10  # Completion budget.
  c.gro.temperature = 0.0  # 0: greedy self answers (as in SPIN); > 0 samples them.
  c.gro.beta = 0.1  # β of SPIN's logistic loss.
  c.gro.nll_weight = 0.0  # α of an RPO-style NLL term on the reference answer (0: SPIN's loss).
  c.gro.spin_steps = 40  # Updates per iteration.
  c.gro.max_epochs = 2.0  # Cap on passes over a round's data (pairs overfit quickly).
  c.gro.batch_size = 32  # Pairs per step.
  c.optimizer.learning_rate = 1e-4  # Higher rates raise the margin but hurt greedy accuracy.
  return c

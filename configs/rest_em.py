"""ReST-EM (Singh et al. 2023): rejection sampling whose M-step fine-tunes the base model afresh.

Launch (a couple of minutes on a 2-core CPU):
  python -m si_jax.main --config=configs/rest_em.py
Same task, model and base phase as configs/rejection_sampling.py. Each iteration samples with the
latest model, keeps the verified samples, and fine-tunes the *base* params with a fresh optimizer
state and step 0 (gro.restart_optimizer=False keeps Adam's moments and the step instead).
"""

import ml_collections

from configs import rejection_sampling


def get_config() -> ml_collections.ConfigDict:
  c = rejection_sampling.get_config()
  c.job = 'rejection_sampling'
  c.workdir = '/tmp/si_jax/rest_em'
  c.gro.restart_from_base = True  # The M-step starts from the base params every iteration.
  c.gro.restart_optimizer = True  # ... with a fresh optimizer state and step (the paper's form).
  c.gro.keep_per_problem = 2  # ReST-EM keeps several correct samples per problem (capped).
  return c

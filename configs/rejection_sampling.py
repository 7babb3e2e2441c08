"""Iterative rejection sampling (STaR / ReST-EM / RFT) on string reversal, from a weak base model.

Launch (a couple of minutes on a 2-core CPU):
  python -m si_jax.main --config=configs/rejection_sampling.py
No labels after the base phase: --config.gro.reward=majority keeps answers that agree with their
group's majority. ReST-EM: configs/rest_em.py; STaR with rationales and rationalization:
configs/star.py.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config()
  c.job = 'rejection_sampling'
  c.workdir = '/tmp/si_jax/rejection_sampling'

  c.task = ml_collections.ConfigDict()
  c.task.name = 'reverse'  # A task of si_jax/tasks.
  c.task.letters = 'abcdefghij'  # Alphabet of the strings.
  c.task.min_len = 1  # Shortest string.
  c.task.max_len = 8  # Longest string.
  c.data.seq_len = 24  # SFT length: bos + prompt (<= 9) + completion (<= max_new_tokens) + eos.
  c.data.seed_set_size = 512  # The labelled seed set: the base phase's only labels.

  # The base SFT phase: the only labels of the run.
  c.train.num_steps = 60  # A weak base model.
  c.train.batch_size = 64  # Sequences per base SFT step.
  c.train.log_every = 20  # Metrics period.
  c.train.eval_size = 256  # Held-out problems for greedy accuracy.

  c.gro = ml_collections.ConfigDict()
  c.gro.num_rounds = 3  # Generate -> filter -> SFT rounds.
  c.gro.problems_per_round = 512  # Fresh problems per round.
  c.gro.group_size = 8  # Samples per problem (k).
  c.gro.max_new_tokens = 10  # Completion budget.
  c.gro.temperature = 1.0  # Sampling temperature.
  c.gro.reward = 'verifiable'  # 'verifiable' or 'majority' (no labels).
  c.gro.accept_threshold = 1.0  # Keep samples whose reward reaches this.
  c.gro.keep_per_problem = 1  # Distinct accepted answers kept per problem.
  c.gro.rationalize = False  # STaR: retry failures with the answer as a hint.
  c.gro.restart_from_base = False  # ReST-EM / STaR: each round fine-tunes the base params afresh.
  c.gro.restart_optimizer = True  # ... as a fresh run: new optimizer state, step 0 (the papers').
  c.gro.sft_steps = 30  # SFT steps per round (at most 2 passes over the kept answers).
  c.gro.max_epochs = 16.0  # Cap on passes over a round's data (few kept answers: train longer).
  c.gro.batch_size = 64  # Sequences per SFT step.

  base.use_tiny_model(c)

  c.optimizer.learning_rate = 3e-3  # Rounds' SFT.
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 10
  c.optimizer.weight_decay = 0.0
  c.base_learning_rate = 1e-2  # Peak LR of the base SFT phase.
  c.checkpoint.async_save = False
  return c

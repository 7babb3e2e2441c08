"""SFT demo: a small transformer learns to reverse strings of length 1-8 from scratch.

Launch (about a minute on a 2-core CPU):
  python -m si_jax.main --config=configs/sft_reverse.py
Override any field: --config.train.num_steps=2000 --config.model.d_model=128
"""

import ml_collections

from configs import base


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  """variant: '' (the demo) or 'tiny' (seconds, for tests: not trained enough to learn)."""
  if variant not in ('', 'tiny'):
    raise ValueError(f"sft_reverse variant {variant!r}: use '' or 'tiny'")
  c = base.get_config()
  c.job = 'sft'
  c.workdir = '/tmp/si_jax/sft_reverse'

  c.task = ml_collections.ConfigDict()
  c.task.name = 'reverse'  # 'reverse' or 'copy' (si_jax/tasks/strings.py).
  c.task.letters = 'abcdefghij'  # Alphabet of the strings.
  c.task.min_len = 1  # Shortest string (difficulty 1).
  c.task.max_len = 8  # Longest string.
  c.data.seq_len = 20  # bos + prompt + '>' + answer + eos fits: 1 + 9 + 8 + 1 = 19.
  c.train.num_steps = 600  # Optimizer steps.
  c.train.batch_size = 64  # Sequences per step (fresh random problems every step).
  c.train.log_every = 100  # Progress-bar metrics period.
  c.train.eval_size = 500  # Held-out problems for the final greedy exact-match accuracy.

  # A tiny model: 2 layers, d=128, GQA, RoPE.
  c.model.vocab_size = 16
  c.model.d_model = 128
  c.model.num_layers = 2
  c.model.num_heads = 4
  c.model.num_kv_heads = 2
  c.model.head_dim = 32
  c.model.mlp_dim = 384

  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 100
  c.optimizer.weight_decay = 0.0
  c.checkpoint.every_steps = 1000
  if variant == 'tiny':
    c.train.num_steps, c.train.batch_size, c.train.log_every, c.train.eval_size = 20, 16, 10, 32
    c.model.d_model, c.model.head_dim, c.model.mlp_dim = 64, 16, 192
    c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-2, 50
    c.checkpoint.every_steps, c.checkpoint.async_save = 10, False
  return c

"""The main job scaled up for an accelerator: the same loop on longer sums with a larger model.

  python -m si_jax.main --config=configs/self_train_arithmetic_accel.py

Same recipe as configs/self_train_arithmetic.py (seed set with few hard problems, majority vote
over a+b and b+a, a control arm), at 3-10 digits with the REF-25M-shaped model (8 layers,
d=512) in bfloat16, larger rounds and batches. The mesh shards over every device (fsdp=-1);
batch sizes are multiples of 64 so they divide the usual device counts. Not measured on CPU.
"""

import ml_collections

from configs import base, self_train_arithmetic


def get_config() -> ml_collections.ConfigDict:
  c = self_train_arithmetic.get_config()
  c.workdir = '/tmp/si_jax/self_train_arithmetic_accel'
  c.task.min_digits = 3  # 2-digit sums are too few for 10 rounds of fresh, unseen benchmarks.
  c.task.max_digits = 10
  c.data.seq_len = 40  # bos + 21-char prompt + 11-digit answer + eos, with room to spare.
  c.data.seed_set_size = 50_000
  c.data.difficulty_weights = (1.0,) * 5 + (0.2, 0.1, 0.05)  # Levels 3..10: few hard ones.
  c.train.num_steps = 5000
  c.train.batch_size = 256

  c.model = base.get_config().model  # REF-25M shapes.
  c.model.vocab_size = 32  # The char tokenizer of the task needs a few dozen ids.
  c.model.dtype = 'bfloat16'

  c.loop.num_rounds = 10
  c.loop.problems_per_round = 16_384
  c.loop.max_new_tokens = 14
  c.loop.sft_steps = 500
  c.loop.batch_size = 256
  c.loop.eval_per_difficulty = 500
  c.data.seed_validation_size = 2000
  c.loop.control_arm.learning_rates = (1e-4, 3e-4, 1e-3)
  c.optimizer.learning_rate = 3e-4
  c.optimizer.warmup_steps = 200
  c.base_learning_rate = 3e-4
  return c

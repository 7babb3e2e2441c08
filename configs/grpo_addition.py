"""Online RL (GRPO) on reversed addition, from a weak SFT-warm-started model.

Launch (a few minutes on a 2-core CPU):
  python -m si_jax.main --config=configs/grpo_addition.py
With no --config.init_from, a short SFT phase on labelled problems (config.train) first trains
the base model into <workdir>/base. Algorithms (the flags each sets: grpo.ALGORITHMS, tabled in
si_jax/optimization/grpo.py): --config=configs/grpo_addition.py:dr_grpo, :dapo or :rloo
(default :grpo).
"""

import ml_collections

from configs import base
from si_jax.optimization import grpo


def get_config(algorithm: str = 'grpo') -> ml_collections.ConfigDict:
  """`algorithm`: a name in grpo.ALGORITHMS, whose flags override the rl section below."""
  if algorithm not in grpo.ALGORITHMS:
    raise ValueError(f'configs/grpo_addition.py:{algorithm}: the algorithm is not one of '
                     f'{sorted(grpo.ALGORITHMS)}')
  c = base.get_config()
  c.job = 'grpo'
  c.workdir = '/tmp/si_jax/grpo_addition'

  c.task = ml_collections.ConfigDict()
  c.task.name = 'addition_reversed'  # A task of si_jax/tasks with a verifier.
  c.task.min_digits = 1  # Easiest level.
  c.task.max_digits = 4  # Hardest level.
  c.data.seq_len = 24  # Base SFT phase: bos + prompt + answer + eos fits.

  # The base SFT phase (only labels of the run).
  c.train.num_steps = 500  # A weak base model (~25% greedy accuracy).
  c.train.batch_size = 64  # Sequences per SFT step.
  c.train.log_every = 50  # Metrics period.
  c.train.eval_size = 256  # Held-out problems for greedy accuracy (same set for SFT and RL).

  c.rl = ml_collections.ConfigDict()
  c.rl.num_iterations = 40  # Rollout + update iterations.
  c.rl.prompts_per_iteration = 16  # Problems per rollout.
  c.rl.group_size = 8  # Samples per problem (G).
  c.rl.max_new_tokens = 8  # Completion budget; longer ones end with finish_reason 'length'.
  c.rl.temperature = 1.0  # Sampling temperature of rollouts.
  c.rl.reward = 'verifiable'  # 'verifiable', 'majority' (no labels), 'verifiable+format', or
  # 'self_judge' (set tokenizer_extra_chars='|ok?yn' for the judge template).
  c.rl.advantage_estimator = 'grpo'  # 'grpo' or 'rloo'.
  c.rl.std_scale = 'group'  # 'group' (GRPO), 'batch', or 'none' (Dr. GRPO).
  c.rl.beta = 0.0  # KL coefficient β; > 0 scores the frozen init_from model as reference.
  c.rl.kl_estimator = 'k3'  # 'k1' or 'k3'.
  c.rl.eps_low = 0.2  # Clip ε below 1.
  c.rl.eps_high = 0.2  # Clip ε above 1 (DAPO clip-higher: 0.28).
  # 'seq_mean_token_mean' (GRPO: per-completion token mean, then mean), 'token_mean' (DAPO),
  # 'seq_mean_token_sum_norm' (Dr. GRPO: token sums / (completions * max_new_tokens)).
  c.rl.aggregation = 'seq_mean_token_mean'
  c.rl.epochs = 1  # Optimisation epochs per rollout (μ); > 1 scores pi_old once per rollout.
  c.rl.mask_overlong = False  # DAPO overlong filtering: no loss on truncated completions.
  # DAPO soft overlong punishment: the last overlong_buffer tokens before max_new_tokens cost
  # a reward penalty rising linearly to -1 at the budget (L_cache); 0: off.
  c.rl.overlong_buffer = 0
  c.rl.dynamic_sampling = False  # DAPO: train only on groups whose rewards differ, sampling
  # more problems until they fill the update: at most max_sample_batches * prompts_per_iteration
  # an update (past that the informative groups are repeated; none at all is an error).
  c.rl.max_sample_batches = 16
  c.rl.eval_every = 10  # Held-out evaluation period (iterations).
  c.rl.eval_samples = 4  # Samples per held-out problem for the mean sampled reward.
  c.rl.checkpoint_every = 10  # Checkpoint period (iterations).

  for key, value in grpo.ALGORITHMS[algorithm].items():
    c.rl[key] = value

  base.use_tiny_model(c)

  c.optimizer.learning_rate = 1e-3  # For the RL phase; the base phase uses base_learning_rate.
  c.optimizer.warmup_steps = 5
  c.optimizer.schedule = 'constant'
  c.optimizer.weight_decay = 0.0
  c.base_learning_rate = 1e-2  # Peak LR of the base SFT phase.
  c.checkpoint.async_save = False
  return c

"""The main job: a weak model improves itself on reversed addition, round by round, no labels.

  python -m si_jax.main            # this config is the default
  python -m si_jax.main --config=configs/self_train_arithmetic.py --config.loop.label=verifier

The only labels of the run are the seed set (config.data.seed_set_size problems), on which a
3-layer model trains briefly from scratch (config.train: the base phase, into <workdir>/base).
Then each round (si_jax/lifecycle.py) acquires fresh problems, samples k answers each,
pseudo-labels by majority vote over the samples of the problem and of its commuted twin (b+a),
keeps answers that 3/4 of them agree on and whose shape is plausible, fine-tunes on the
accumulated store plus some seed data, and evaluates on a fresh benchmark; a control arm takes
the same steps on the seed set only. Outputs in workdir: rounds.md (the per-round table),
accuracy.png, metrics.jsonl, tensorboard/, checkpoints/, store/.
"""

import ml_collections

from configs import base


def get_config() -> ml_collections.ConfigDict:
  c = base.get_config()
  c.job = 'self_train'
  c.workdir = '/tmp/si_jax/self_train_arithmetic'

  c.task = ml_collections.ConfigDict()
  c.task.name = 'addition_reversed'  # Any task of si_jax/tasks with a verifier (for evaluation).
  c.task.min_digits = 2  # Easiest level (1-digit sums are too few for fresh benchmarks).
  c.task.max_digits = 5  # Hardest level.
  c.task.pad_operands = False  # Zero-pad both operands to the level's width (one layout).

  c.data = ml_collections.ConfigDict()
  c.data.seq_len = 24  # bos + 'a+b=' + answer + eos (model samples longer than that are cut).
  c.data.seed_set_size = 3000  # The labelled seed set: the only labels of the run.
  c.data.difficulty_weights = (1.0, 1.0, 0.2, 0.1)  # Seed set mix: few hard problems.
  c.data.seed_validation_size = 300  # Held out of the seed set: monitors and control tuning.

  c.train = ml_collections.ConfigDict()  # The base phase: brief SFT on the seed set.
  c.train.num_steps = 2000
  c.train.batch_size = 64
  c.train.log_every = 100
  c.train.eval_size = 500  # Held-out problems the base phase reports on.

  c.loop = ml_collections.ConfigDict()  # si_jax/lifecycle.py
  c.loop.num_rounds = 8
  c.loop.problems_per_round = 1000  # Fresh problems acquired per round.
  c.loop.start_difficulty = 0  # Top level of the first round's mix; 0: every level.
  c.loop.group_size = 8  # Samples per prompt (k).
  c.loop.rewrites = True  # Also sample the task's equivalent rewrites (a+b -> b+a); vote on all.
  c.loop.train_rewrites = False  # Train on every rewrite of a kept problem, not just itself.
  c.loop.top_level_share = 0.5  # Share of the acquired problems at the controller's top level.
  c.loop.temperature = 1.0  # Sampling temperature.
  c.loop.max_new_tokens = 8  # Completion budget (answers have <= max_digits + 1 digits).
  c.loop.label = 'majority'  # 'majority' (no labels) or 'verifier' (verifiable reward).
  c.loop.min_agreement = 0.75  # Keep a pseudo-label when this share of its samples agree.
  c.loop.select_score = ''  # Optional selection score (si_jax/lifecycle.SELECT_SCORES).
  c.loop.select_fraction = 1.0  # Fraction of the labelled examples the score keeps.
  c.loop.policy = 'accumulate'  # Self-generated data: every round's ('accumulate') or the last.
  c.loop.seed_mix_ratio = 0.25  # Share of seed (real) data in each round's training set.
  c.loop.sft_steps = 200  # Update steps per round, for both arms.
  c.loop.batch_size = 64
  c.loop.max_epochs = 1e9  # No cap on passes over a round's data.
  c.loop.eval_per_difficulty = 200  # Fresh benchmark problems per level and round.
  c.loop.monitor_z = 2.0  # Monitors flag a change beyond this many standard errors only.
  c.loop.hacking_fall = 0.05  # Reward-hacking flag: proxy up, held-out seed accuracy down this.
  c.loop.collapse_drop = 0.3  # Collapse flag: sample diversity or entropy fell this much,
  c.loop.collapse_nll_rise = 0.05  # ... and held-out seed NLL rose this much (relative).
  c.loop.control_arm = ml_collections.ConfigDict()  # si_jax/optimization/tuned_sft.py
  c.loop.control_arm.learning_rates = (5e-4, 1e-3, 2e-3)  # Swept on the seed set, from the base,
  c.loop.control_arm.schedules = ('constant', 'cosine')  # chosen by held-out seed loss.
  c.loop.stop_on_plateau = False  # Stop when the controller says so (else only log it).
  c.loop.controller = ml_collections.ConfigDict()  # si_jax/evaluation/controller.py
  c.loop.controller.raise_at = 0.8
  c.loop.controller.patience = 3
  c.loop.controller.min_delta = 0.0
  c.loop.controller.regression_tol = 0.1
  c.loop.controller.real_data_ratio = 0.5

  base.use_tiny_model(c)
  c.model.num_layers = 3

  c.optimizer.learning_rate = 2e-3
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 50
  c.optimizer.weight_decay = 0.0
  c.base_learning_rate = 2e-3  # LR of the base phase.
  c.base_schedule = 'constant'  # No decay: a base that has not memorized its seed set.
  c.checkpoint.async_save = False
  c.checkpoint.max_to_keep = 20  # Every round's checkpoint: the controller may roll back.
  return c

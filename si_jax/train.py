"""Supervised training on a task: the SFT demo, and the base-model phase of the main job.

One readable loop: set up mesh, tokenizer, sharded state and checkpoints; train on fresh problems
drawn from the task (deterministic per step, so a resumed run sees the batches an uninterrupted
one would); checkpoint; finish with greedy exact-match accuracy on held-out problems.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import tqdm

from si_jax import experiment, layout, metrics, models, sharding
from si_jax.evaluation import accuracy
from si_jax.optimization import sft, train_step

# Seeds: training batch s draws from [seed, 0, s], evaluation from [seed, 1]: never the same
# (the seed set, experiment.seed_set, is drawn from [seed, 0] and sampled with [seed, 0, s]).


def _batch_problems(config, task, step: int, pool):
  if pool is None:  # Unlimited labels: fresh problems every step.
    return task.sample([config.seed, 0, step], config.train.batch_size)
  rng = np.random.default_rng([config.seed, 0, step])
  return [pool[i] for i in rng.integers(0, len(pool), config.train.batch_size)]


def _prompts(config, task, step: int, problems) -> list[str]:
  """The batch's prompts; with data.hint_fraction > 0 that fraction carries the final answer as
  a hint (data.hint_template): STaR's hinted few-shot exemplars, from which the model learns to
  rationalize (write the steps to a given answer). The target is the full answer either way."""
  fraction = config.data.hint_fraction
  if not fraction:
    return [p.prompt for p in problems]
  hinted = np.random.default_rng([config.seed, 2, step]).random(len(problems)) < fraction
  return [task.hinted_prompt(p, config.data.hint_template) if h else p.prompt
          for p, h in zip(problems, hinted)]


def run(config) -> dict:
  """Trains per `config` (see configs/sft_reverse.py) and returns the final metrics."""
  # --- Setup: mesh, task, tokenizer, sharded state (resumed or warm-started) ---
  exp, state = experiment.setup(config, config.train.num_steps)
  model, tokenizer, task, mesh = exp.model, exp.tokenizer, exp.task, exp.mesh
  print(f'Model: {models.param_count(state.params):,} parameters; mesh {dict(mesh.shape)}')

  # --- Train ---
  step_fn = train_step.jit_train_step(
      train_step.make_train_step(functools.partial(sft.sft_loss, model), exp.tx, exp.schedule,
                                 config.optimizer.grad_accum_steps), exp.shardings, mesh)
  writer, ckpt = exp.writer, exp.ckpt
  first_step, num_steps = int(state.step), config.train.num_steps
  writer.rewind(first_step)
  pool = experiment.seed_split(config, task)[0] if config.data.seed_set_size else None
  try:  # Close (wait for pending async saves) even when interrupted.
    bar = tqdm.trange(first_step, num_steps, initial=first_step, total=num_steps, desc='sft')
    for step in bar:
      problems = _batch_problems(config, task, step, pool)
      batch = layout.sft_rows(tokenizer, _prompts(config, task, step, problems),
                                 [p.answer for p in problems], config.data.seq_len)
      state, step_metrics = step_fn(state, sharding.shard_batch(batch, mesh))
      if (step + 1) % config.train.log_every == 0 or step + 1 == num_steps:
        logged = metrics.to_python(step_metrics)
        writer.write(step + 1, logged)
        bar.set_postfix(loss=f"{logged['loss']:.4f}", acc=f"{logged['token_accuracy']:.3f}")
      if (step + 1) % config.checkpoint.every_steps == 0 or step + 1 == num_steps:
        exp.save(step + 1, state)
  finally:
    ckpt.close()

  # --- Evaluate: greedy exact match on held-out problems ---
  eval_problems = task.sample([config.seed, 1], config.train.eval_size)
  exact, _ = accuracy.greedy_accuracy(model, state.params, tokenizer, task, eval_problems,
                            max_new_tokens=config.data.seq_len)
  result = {'step': int(state.step), 'exact_match': exact}
  writer.write(int(state.step), {'eval_exact_match': exact})
  print(f'Greedy exact match on {len(eval_problems)} held-out {task.name} problems: '
        f'{exact:.1%}')
  return result


def warm_start(config) -> str:
  """The workdir to warm-start from: config.init_from, else a base model trained here.

  The base phase is ordinary SFT (`run` here) on labelled problems per config.train, into
  <workdir>/base; it resumes like any run, so a restarted GRO job does not retrain it.
  """
  if config.init_from:
    return config.init_from
  base_config = config.copy_and_resolve_references()
  with base_config.unlocked():
    base_config.job = 'sft'
    base_config.workdir = os.path.join(config.workdir, 'base')
    base_config.optimizer.schedule = config.base_schedule
    base_config.optimizer.learning_rate = config.base_learning_rate
    base_config.optimizer.warmup_steps = max(1, config.train.num_steps // 10)
  run(base_config)
  return base_config.workdir

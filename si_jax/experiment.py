"""What every loop sets up first: mesh, task, tokenizer, sharded state, checkpoints.

`setup(config, total_steps)` returns these as plain fields, and the train state on its own: the
loops (si_jax/train.py and the GRO paradigms in si_jax/optimization/) thread it through their
steps as a value, `state, metrics = step(state, batch)`, and hand it to `save`; nothing keeps a
second, stale reference to buffers a donated step has consumed. Start-up order:
  1. resume: the run's own workdir holds a checkpoint -> state, tokenizer and metadata from it;
  2. warm start: `config.init_from` names an earlier run's workdir (or an HF checkpoint, see
     `config.init_from_hf`) -> its tokenizer and params, with a fresh optimizer (how GRO loops
     start from an SFT model);
  3. otherwise a fresh model and a char tokenizer trained on the task's alphabet.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import optax
from absl import logging
from jax.sharding import Mesh

from si_jax import checkpoint, metrics, models, optimizers, sharding, tasks, train_state
from si_jax.models import hf
from si_jax.tokenizers import Tokenizer


@dataclasses.dataclass
class Experiment:
  config: Any
  mesh: Mesh
  task: tasks.Task
  tokenizer: Tokenizer
  model: models.Model
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  shardings: train_state.TrainState
  ckpt: checkpoint.Checkpointer
  writer: metrics.JsonlWriter
  meta: dict[str, Any]  # Written with every checkpoint; the loop adds its own progress to it.
  resumed: bool

  def save(self, step: int, state: train_state.TrainState, **progress):
    """Checkpoints `state` with the metadata plus this loop's progress (round, cursors...)."""
    self.meta.update(progress)
    self.ckpt.save(step, state, self.meta, force=True)

  def abstract_state(self) -> train_state.TrainState:
    """Shapes, dtypes and shardings of this experiment's train state (to restore into)."""
    return train_state.state_shardings(self.model.cfg, self.tx, self.mesh)[0]

  def restore(self, step: int) -> train_state.TrainState:
    """The state checkpointed at `step` (e.g. a round to roll back to)."""
    if step not in self.ckpt.all_steps():
      raise FileNotFoundError(
          f'step {step} of {self.ckpt.directory} is gone: raise config.checkpoint.max_to_keep '
          f'(>= loop.num_rounds + 1 keeps every round of a loop)')
    state, _ = self.ckpt.restore(self.abstract_state(), self.shardings, step=step)
    return state


def make_task(config) -> tasks.Task:
  kwargs = {k: v for k, v in config.task.items() if k != 'name'}
  return tasks.get_task(config.task.name, **kwargs)


def _tokenizer(task: tasks.Task, workdir: str, init_from: str, extra_chars: str) -> Tokenizer:
  """The run's own tokenizer, else the warm start's, else a fresh char one (saved either way)."""
  for directory in (workdir, init_from):
    if directory and os.path.exists(os.path.join(directory, 'tokenizer.model')):
      tokenizer = Tokenizer.load(directory)
      break
  else:
    if hf.is_checkpoint(init_from):
      raise FileNotFoundError(
          f'{init_from} (config.init_from_hf) has no sentencepiece tokenizer.model: a fresh '
          f'tokenizer would not match its embeddings. Copy the checkpoint\'s tokenizer.model '
          f'there (BPE tokenizer.json files, e.g. Qwen2\'s, are not read)')
    chars = task.alphabet() + extra_chars
    tokenizer = Tokenizer.train([chars], vocab_size=len(chars) + 8)
  tokenizer.save(workdir)
  return tokenizer


def setup(config, total_steps: int) -> tuple[Experiment, train_state.TrainState]:
  """Everything a loop needs from `config` (see configs/base.py), and its starting state."""
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(config.mesh)
  model_cfg = models.TransformerConfig.from_config_dict(config.model)
  task = make_task(config)
  workdir = config.workdir
  init_from = config.init_from
  os.makedirs(workdir, exist_ok=True)
  tokenizer = _tokenizer(task, workdir, init_from, config.tokenizer_extra_chars)
  tokenizer.check_model_vocab(model_cfg.vocab_size)

  tx, schedule = optimizers.make_optimizer(config.optimizer, total_steps)
  model, state, shardings = train_state.create(model_cfg, tx, mesh, config.seed)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                 config.checkpoint.max_to_keep, config.checkpoint.async_save)
  meta = {'model_config': checkpoint.model_config_dict(model_cfg),
          'tokenizer_vocab_size': tokenizer.vocab_size}
  resumed = config.checkpoint.resume and ckpt.latest_step() is not None
  if resumed:
    abstract, _ = train_state.state_shardings(model_cfg, tx, mesh)
    state, saved_meta = ckpt.restore(abstract, shardings, model_cfg=model_cfg)
    _check_tokenizer(saved_meta, tokenizer, workdir)
    meta.update({k: v for k, v in saved_meta.items() if k not in meta})
    logging.info('Resumed from step %d', int(state.step))
  elif init_from:
    params, saved_meta = load_params(init_from, model_cfg, shardings.params, with_meta=True)
    _check_tokenizer(saved_meta, tokenizer, init_from)
    state = state.replace(params=params)
    logging.info('Warm start from %s', init_from)
  writer = metrics.JsonlWriter(os.path.join(workdir, 'metrics.jsonl'))
  exp = Experiment(config, mesh, task, tokenizer, model, tx, schedule, shardings, ckpt, writer,
                   meta, resumed)
  return exp, state


def seed_set(config, task) -> list:
  """The labelled seed set of config.data (seed_set_size problems, difficulty_weights mix)."""
  data = config.data
  return task.sample([config.seed, 0], data.seed_set_size,
                     data.difficulty_weights)


def seed_split(config, task) -> tuple[list, list]:
  """The seed set as (training, validation): the last data.seed_validation_size problems are
  held out from all training (the base, the loop, the control), minus any whose prompt the
  training split also holds. The validation slice is where a label-free loop may still read
  labels: they were paid for with the seed set, and no round's own problem is among them."""
  problems = seed_set(config, task)
  n_train = len(problems) - config.data.seed_validation_size
  train_split = problems[:n_train]
  seen = {p.prompt for p in train_split}
  return train_split, [p for p in problems[n_train:] if p.prompt not in seen]


def check_workdir(workdir: str) -> None:
  """Fails before any work when the run could not save what it computes."""
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_probe_'):
      pass
  except OSError as e:
    raise PermissionError(f'config.workdir={workdir!r} is not writable ({e.strerror}): the run '
                          f'could not save checkpoints. Pass a writable --config.workdir') from e


def load_params(workdir: str, model_cfg: models.TransformerConfig, param_shardings,
                with_meta: bool = False):
  """The latest params of the run in `workdir` (a warm start, or a frozen reference model), or
  of the HF checkpoint there."""
  if hf.is_checkpoint(workdir):
    params = hf.load_params(workdir, model_cfg, param_shardings)
    return (params, {}) if with_meta else params
  source = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'))
  _, abstract_params = models.abstract_model(model_cfg)
  params, meta = source.restore_params(abstract_params, param_shardings, model_cfg=model_cfg)
  source.close()
  return (params, meta) if with_meta else params


def _check_tokenizer(saved_meta: dict, tokenizer: Tokenizer, where: str):
  saved = saved_meta.get('tokenizer_vocab_size', tokenizer.vocab_size)
  if saved != tokenizer.vocab_size:
    raise ValueError(f'checkpoint in {where} was trained with a {saved}-piece tokenizer but '
                     f'the tokenizer found has {tokenizer.vocab_size}: restore the tokenizer '
                     f'saved with the run, or use a fresh config.workdir')

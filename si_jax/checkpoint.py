"""Durable, resumable checkpoints: orbax CheckpointManager around the TrainState + JSON metadata.

Each checkpoint holds the sharded train state (params, optimizer state, step, RNG) and a JSON
dict (round, data-iterator state, controller state, the model config and tokenizer size). Orbax
writes into a temporary directory and renames it when complete, so a killed run never leaves a
half-written "latest" checkpoint. Restores go onto any mesh: the caller passes the shardings.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from si_jax import models


class Checkpointer:

  def __init__(self, directory: str, max_to_keep: int = 2, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             enable_async_checkpointing=async_save,
                                             create=True),
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'meta': ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, meta: dict[str, Any] | None = None, force: bool = False) -> bool:
    """Saves (asynchronously if configured). `meta` must be JSON-serialisable."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta or {}))),
        force=force)

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self._resolve(step)
    return dict(self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta'])

  def restore(self, abstract_state, shardings, step: int | None = None,
              model_cfg: models.TransformerConfig | None = None):
    """Restores (state, meta) onto `shardings` (any mesh). Latest step when step is None.

    With `model_cfg`, first checks the checkpoint was written for the same architecture and
    names the fields that differ, instead of failing deep inside orbax.
    """
    step = self._resolve(step)
    meta = self.read_meta(step)
    if model_cfg is not None and 'model_config' in meta:
      check_model_config(meta['model_config'], model_cfg, f'{self.directory}/{step}')
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          abstract_state, shardings)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f'checkpoint {self.directory}/{step} does not match the state being '
                       f'restored (different model, optimizer or train state?): {e}') from e
    return restored['state'], meta

  def restore_params(self, abstract_params, param_shardings, step: int | None = None,
                     model_cfg: models.TransformerConfig | None = None):
    """Only the params of a checkpoint, whatever optimizer wrote it (warm starts, references).

    The rest of the saved state is read replicated and dropped: fine at the scales where warm
    starts from another run happen; params land directly on their shardings.
    """
    step = self._resolve(step)
    meta = self.read_meta(step)
    if model_cfg is not None and 'model_config' in meta:
      check_model_config(meta['model_config'], model_cfg, f'{self.directory}/{step}')
    saved = self.manager.item_metadata(step)['state']
    rep = jax.sharding.NamedSharding(jax.tree.leaves(param_shardings)[0].mesh,
                                     jax.sharding.PartitionSpec())
    target = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=rep),
                              saved[k]) for k in saved.keys() if k != 'params'}
    target['params'] = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_params,
        param_shardings)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f'params in {self.directory}/{step} do not match the model: {e}') from e
    return restored['state']['params'], meta

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()

  def _resolve(self, step: int | None) -> int:
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f'no checkpoint in {self.directory}: check the path '
                              f'(config.workdir), or start without resuming')
    if step is None:
      return max(steps)
    if step not in steps:
      raise FileNotFoundError(f'no checkpoint for step {step} in {self.directory}; '
                              f'available steps: {sorted(steps)}')
    return step


def model_config_dict(cfg: models.TransformerConfig) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def check_model_config(saved: dict[str, Any], cfg: models.TransformerConfig, where: str):
  """Raises naming each architecture field that differs (remat/dtype may differ freely)."""
  free = {'remat', 'dtype'}
  current = model_config_dict(cfg)
  diffs = {k: (saved.get(k), v) for k, v in current.items()
           if k not in free and saved.get(k) != v}
  if diffs:
    lines = ', '.join(f'{k}: checkpoint={a!r} config={b!r}' for k, (a, b) in sorted(diffs.items()))
    raise ValueError(f'checkpoint {where} was written for a different model ({lines}); '
                     f'set config.model to match or use another workdir')

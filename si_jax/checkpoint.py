"""Durable, resumable checkpoints: orbax CheckpointManager around the TrainState + JSON metadata.

Each checkpoint holds the sharded train state (params, optimizer state, step, RNG) and a JSON
dict (round, data-iterator state, controller state, the model config and tokenizer size). Orbax
writes into a temporary directory and renames it when complete, so a killed run never leaves a
half-written "latest" checkpoint. Restores go onto any mesh: the caller passes the shardings.

Orbax stores no checksums: a flipped byte in an array file restores silently as wrong numbers.
So every save also records a fingerprint of each array (an integer hash of its bits, exact on any
mesh because integer sums do not depend on the reduction order), and every restore checks it. A
damaged checkpoint fails naming its directory and what to do; nothing on disk is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
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
    meta = {**(meta or {}), 'fingerprints': fingerprints(state)}
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def read_meta(self, step: int | None = None) -> dict[str, Any]:
    step = self._resolve(step)
    with self._named_errors(step):
      return dict(self.manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))['meta'])

  @contextlib.contextmanager
  def _named_errors(self, step: int):
    """Any failure to read a checkpoint (missing, truncated or garbled files) names it and the
    ways out; ValueErrors that already name it pass through."""
    try:
      yield
    except ValueError as e:
      if self.directory in str(e):
        raise
      raise self._damaged(step, e) from e
    except Exception as e:  # pylint: disable=broad-except  # orbax / tensorstore / JSON errors.
      raise self._damaged(step, e) from e

  def _damaged(self, step: int, error: Exception) -> ValueError:
    others = sorted(s for s in self.all_steps() if s != step)
    first_line = (str(error).splitlines() or [''])[0][:200]
    return ValueError(
        f'checkpoint {self.directory}/{step} is damaged or incomplete '
        f'({type(error).__name__}: {first_line}). Nothing was changed on disk. Move that '
        f'directory aside to resume from the previous checkpoint '
        f'({others[-1] if others else "none left: a fresh start"}), or use another workdir.')

  def _check_fingerprints(self, step: int, restored, meta: dict[str, Any], prefix: str = '',
                          cast: frozenset[str] = frozenset()):
    """Every restored array's bits against the fingerprint saved with it, except the `cast`
    paths: restored into another dtype, their bits differ by design."""
    saved = meta.get('fingerprints')
    if saved is None:  # Written before fingerprints existed.
      return
    for path, value in fingerprints(restored, prefix).items():
      if path not in cast and saved.get(path, value) != value:
        raise self._damaged(step, ValueError(f'array {path} does not match the fingerprint '
                                             f'recorded when it was saved'))

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
    state, cast = self._restore_state(step, target, self._state_metadata(step),
                                      f'checkpoint {self.directory}/{step} does not match the '
                                      f'state being restored (different model, optimizer or '
                                      f'train state?)')
    self._check_fingerprints(step, state, meta, cast=cast)
    return state, meta

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
    saved = self._state_metadata(step)
    rep = jax.sharding.NamedSharding(jax.tree.leaves(param_shardings)[0].mesh,
                                     jax.sharding.PartitionSpec())
    target = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=rep),
                              saved[k]) for k in saved.keys() if k != 'params'}
    target['params'] = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_params,
        param_shardings)
    state, cast = self._restore_state(
        step, target, saved, f'params in {self.directory}/{step} do not match the model')
    params = state['params']
    self._check_fingerprints(step, params, meta, prefix='params', cast=cast)
    return params, meta

  def _state_metadata(self, step: int):
    """The saved state's tree of array metadata (shapes, dtypes); reads no array."""
    with self._named_errors(step):
      return self.manager.item_metadata(step)['state']

  def _restore_state(self, step: int, target, saved_metadata, mismatch: str):
    """(the state item of `step` on `target`, the paths cast to another dtype); a different
    state raises `mismatch`, unreadable files raise the damaged-checkpoint error."""
    cast = _cast_paths(saved_metadata, target, mismatch)
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))['state'], cast
    except (ValueError, KeyError, TypeError) as e:
      if _is_damage(e):
        raise self._damaged(step, e) from e
      raise ValueError(f'{mismatch}: {e}') from e
    except Exception as e:  # pylint: disable=broad-except  # tensorstore read errors.
      raise self._damaged(step, e) from e

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


def _is_damage(error: Exception) -> bool:
  """Errors orbax raises for missing or unreadable files rather than for a different state."""
  text = str(error)
  return any(k in text for k in ('not found', 'does not exist', 'TensorStore', 'Available items'))


def _paths(tree, prefix: str = '') -> tuple[list[str], list[Any]]:
  """Leaf paths as 'a/b/0' (the same for a dataclass field and the dict key orbax saves it
  under), and the leaves."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  paths = ['/'.join([prefix] * bool(prefix) + [str(getattr(k, 'key', getattr(k, 'name', k)))
                                                for k in path]) for path, _ in leaves]
  return paths, [leaf for _, leaf in leaves]


def _cast_paths(saved_metadata, target, mismatch: str) -> frozenset[str]:
  """Compares `target`'s shapes with the saved arrays' metadata before any array is read, and
  returns the paths whose dtype differs (orbax casts them on restore).

  Orbax would find a shape mismatch only inside its asynchronous reads, and leave the failed
  read tasks behind to log "exception was never retrieved" whenever they are collected; this
  names every array that differs instead.
  """
  saved, wanted = dict(zip(*_paths(saved_metadata))), dict(zip(*_paths(target)))
  diffs = [f'{p}: checkpoint={tuple(saved[p].shape) if p in saved else "absent"} '
           f'wanted={tuple(x.shape)}' for p, x in wanted.items()
           if p not in saved or saved[p].shape != x.shape]
  diffs += [f'{p}: not in the state being restored' for p in saved if p not in wanted]
  if diffs:
    raise ValueError(f'{mismatch}: {"; ".join(diffs[:6])}'
                     + (f' (and {len(diffs) - 6} more)' if len(diffs) > 6 else ''))
  return frozenset(p for p, x in wanted.items()
                   if jnp.dtype(x.dtype) != jnp.dtype(saved[p].dtype))


def fingerprints(tree, prefix: str = '') -> dict[str, int]:
  """{path: hash of the array's bits}: uint32 sum of bits x position-dependent odd weights, so a
  changed, zeroed or moved element changes it, and it is the same on any mesh."""
  paths, leaves = _paths(tree, prefix)
  values = jax.device_get(_fingerprint_all(leaves))
  return {p: int(v) for p, v in zip(paths, values)}


def _fingerprint(x):
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
  bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).reshape(-1)
  weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
  return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit  # Compiled once per state structure, not once per save.
def _fingerprint_all(leaves):
  return [_fingerprint(x) for x in leaves]


def model_config_dict(cfg: models.TransformerConfig) -> dict[str, Any]:
  return dataclasses.asdict(cfg)


def check_model_config(saved: dict[str, Any], cfg: models.TransformerConfig, where: str):
  """Raises naming each architecture field that differs (remat/dtype may differ freely)."""
  free = {'remat', 'dtype'}
  current = model_config_dict(cfg)
  defaults = {f.name: f.default for f in dataclasses.fields(models.TransformerConfig)}
  diffs = {k: (saved.get(k, defaults[k]), v) for k, v in current.items()  # Older checkpoints
           if k not in free and saved.get(k, defaults[k]) != v}  # lack newer (default) knobs.
  if diffs:
    lines = ', '.join(f'{k}: checkpoint={a!r} config={b!r}' for k, (a, b) in sorted(diffs.items()))
    raise ValueError(f'checkpoint {where} was written for a different model ({lines}); '
                     f'set config.model to match or use another workdir')

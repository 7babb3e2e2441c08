"""Mesh construction and the one logical -> mesh axis rules table.

Model code names logical axes only (see si_jax/models). This module decides where they live:

  mesh axes:  data   (pure data parallelism: batch only)
              fsdp   (batch *and* parameter/optimizer-state sharding, ZeRO-3 style)
              tensor (heads / mlp / vocab split across devices, Megatron style)

`RULES` is pure FSDP + tensor parallelism, the small-scale default; a config may override entries
(`config.mesh.rules`). A dimension whose size is not divisible by its mesh axes is replicated
instead (e.g. one KV head under tensor=4, MQA), rather than failing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
RULES: dict[str, str | tuple[str, ...] | None] = {
    'batch': ('data', 'fsdp'),
    'seq': None,
    'embed': 'fsdp',
    'heads': 'tensor',
    'kv_heads': 'tensor',
    'head_dim': None,
    'mlp': 'tensor',
    'vocab': 'tensor',
    'norm': None,
}

# Sampling reads every weight once per generated token: re-gathering FSDP shards each step costs
# more than it saves at small batch, so weights keep only their tensor-parallel split.
SAMPLING_RULES = {**RULES, 'embed': None}


def maybe_initialize_distributed():
  """Calls jax.distributed.initialize() when launched as one of several processes: under SLURM,
  Open MPI or on a TPU pod (jax finds the others; SI_JAX_DISTRIBUTED=1 forces the call), or by
  hand with JAX_COORDINATOR_ADDRESS=host:port SI_JAX_NUM_PROCESSES=n SI_JAX_PROCESS_ID=i (CPU
  processes then talk over gloo). Must run before anything touches a device."""
  env = os.environ
  if jax.distributed.is_initialized():
    return
  if 'SI_JAX_NUM_PROCESSES' in env:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(env['JAX_COORDINATOR_ADDRESS'], int(env['SI_JAX_NUM_PROCESSES']),
                               int(env['SI_JAX_PROCESS_ID']))
  elif any(k in env for k in ('SI_JAX_DISTRIBUTED', 'JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS',
                              'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES')):
    jax.distributed.initialize()


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over ('data', 'fsdp', 'tensor'). One size may be -1: the rest of the devices."""
  devices = list(jax.devices() if devices is None else devices)
  unknown = set(axes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f'config.mesh has unknown axes {sorted(unknown)}; allowed: {MESH_AXES}')
  sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
  bad = {k: v for k, v in sizes.items() if v == 0 or v < -1}
  if bad or list(sizes.values()).count(-1) > 1:
    raise ValueError(f'config.mesh sizes must be positive, with at most one -1; got {sizes}')
  known = math.prod(v for v in sizes.values() if v != -1)
  if -1 in sizes.values():
    if len(devices) % known:
      raise ValueError(f'config.mesh {sizes}: this machine has {len(devices)} devices, which '
                       f'the fixed axes ({known}) do not divide')
    sizes = {k: (len(devices) // known if v == -1 else v) for k, v in sizes.items()}
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(
        f'config.mesh {sizes} needs {math.prod(sizes.values())} devices but this machine has '
        f'{len(devices)} devices ({devices[0].platform}); set one axis to -1 to use all of them.')
  shape = tuple(sizes[name] for name in MESH_AXES)
  device_grid = np.asarray(devices).reshape(shape)
  return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None, rules: Mapping | None = None) -> P:
  """Maps logical axis names to a PartitionSpec; replicates dims that the mesh does not divide."""
  rules = RULES if rules is None else rules
  spec = []
  used = set()
  for i, name in enumerate(logical):
    if name is not None and name not in rules:
      raise KeyError(f'logical axis {name!r} has no rule; known: {sorted(rules)}')
    target = None if name is None else rules[name]
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)  # a mesh axis may shard only one dim.
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape[a] > 1)
      if shape is not None and shape[i] % math.prod(mesh.shape[a] for a in axes):
        axes = ()
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def named_shardings(logical_tree, abstract_tree, mesh: Mesh, rules: Mapping | None = None):
  """NamedShardings for a tree of arrays given the matching tree of logical axis tuples."""
  return jax.tree.map(
      lambda axes, x: NamedSharding(mesh, logical_to_spec(axes, x.shape, mesh, rules)),
      logical_tree, abstract_tree, is_leaf=lambda x: isinstance(x, tuple))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2, rules: Mapping | None = None) -> NamedSharding:
  """Shards the leading (batch) dim over the data axes; the rest replicated."""
  return NamedSharding(mesh, logical_to_spec(('batch',) + (None,) * (ndim - 1), None, mesh, rules))


def shard_batch(batch, mesh: Mesh, rules: Mapping | None = None):
  """Places this process's batch (tree of numpy arrays, same leading dim) onto the mesh.

  Each process passes its own slice of the global batch (the whole batch on one host).
  """
  def put(x):
    x = np.asarray(x)
    data_size = math.prod(mesh.shape[a] for a in ('data', 'fsdp'))
    if (x.shape[0] * jax.process_count()) % data_size:
      raise ValueError(f'batch dim {x.shape[0]} is not divisible by the data-parallel mesh size '
                       f'{data_size} (data x fsdp); change the batch size or config.mesh')
    return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim, rules), x)
  return jax.tree.map(put, batch)

"""Two sharded SFT steps and two GRPO steps of a tiny model, as JSON on stdout.

  python tests/distributed_steps.py PROCESS_ID NUM_PROCESSES PORT

Run alone (1 process) or as each of N processes joined by `jax.distributed` on localhost (CPU
collectives over gloo); tests/test_distributed.py checks that both print the same numbers. Every
process builds the same global batch from a fixed seed and feeds only its own rows, as a
multi-host data loader does.
"""

import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax._src import distributed  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def together(name: str, fn, *args):
  """fn compiled for args, then run once every process is ready to run it: gloo gives a peer
  only 30 s to reach a collective (its context set-up ignores the XLA timeouts, jax-ml/jax#40831),
  and on a loaded 2-core machine one process can compile far longer than the other. The barrier
  is the coordination service's (a key-value wait with its own timeout), not a collective.
  Returns (the compiled program, its outputs)."""
  compiled = fn.lower(*args).compile()
  if jax.process_count() > 1:
    distributed.global_state.client.wait_at_barrier(name, 900_000)
  return compiled, compiled(*args)


def main(process_id: int, num_processes: int, port: int):
  if num_processes > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    # Generous timeouts: on a loaded 2-core CI machine one process may compile minutes late.
    jax.distributed.initialize(f'localhost:{port}', num_processes, process_id,
                               initialization_timeout=900, heartbeat_timeout_seconds=900,
                               shutdown_timeout_seconds=900)
  # pylint: disable=g-import-not-at-top
  from si_jax import models, optimizers, sharding, train_state
  from si_jax.optimization import grpo, sft, train_step
  import ml_collections
  cfg = models.TransformerConfig(vocab_size=32, d_model=32, num_layers=2, num_heads=4,
                                 num_kv_heads=2, head_dim=8, mlp_dim=64)
  opt = ml_collections.ConfigDict(dict(
      learning_rate=1e-2, schedule='constant', warmup_steps=0, decay_fraction=0.2,
      end_lr_fraction=0.1, restart_every=0, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.01,
      grad_clip=1.0, grad_accum_steps=1))
  tx, schedule = optimizers.make_optimizer(opt, total_steps=10)
  mesh = sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1})
  model, state, shardings = train_state.create(cfg, tx, mesh, seed=0)

  rng = np.random.default_rng(0)
  batch_size, rows = 8, slice(process_id * 8 // num_processes, (process_id + 1) * 8 // num_processes)
  local = lambda batch: {k: v[rows] for k, v in batch.items()}
  sft_batch = {'tokens': rng.integers(4, 32, (batch_size, 12)).astype(np.int32),
               'loss_mask': np.ones((batch_size, 12), bool)}
  grpo_batch = {'prompt': rng.integers(4, 32, (batch_size, 6)).astype(np.int32),
                'prompt_mask': np.ones((batch_size, 6), bool),
                'completion': rng.integers(4, 32, (batch_size, 5)).astype(np.int32),
                'completion_mask': rng.random((batch_size, 5)) < 0.8,
                'advantages': rng.normal(size=batch_size).astype(np.float32)}
  out = {'devices': jax.device_count(), 'processes': jax.process_count()}
  for name, loss_fn, batch in (
      ('sft', functools.partial(sft.sft_loss, model), sft_batch),
      ('grpo', functools.partial(grpo.grpo_loss, model, cfg=grpo.GRPOConfig()), grpo_batch)):
    step = train_step.jit_train_step(train_step.make_train_step(loss_fn, tx, schedule),
                                     shardings, mesh)
    sharded = sharding.shard_batch(local(batch), mesh)
    step, (state, metrics) = together(f'{name}_step', step, state, sharded)
    losses = [float(metrics['loss'])]
    state, metrics = step(state, sharded)
    losses.append(float(metrics['loss']))
    _, norms = together(f'{name}_norms', jax.jit(
        lambda p: jax.tree.map(lambda x: jnp.sqrt(jnp.sum(x * x)), p),
        out_shardings=sharding.replicated(mesh)), state.params)
    out[name] = {'losses': losses,
                 'param_norms': [float(x) for x in jax.tree.leaves(norms)]}
  if process_id == 0:
    print(json.dumps(out))
  if num_processes > 1:
    jax.distributed.shutdown()


if __name__ == '__main__':
  main(*map(int, sys.argv[1:4]))

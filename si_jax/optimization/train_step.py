"""The one update step every objective shares: grads of a summed loss, accumulated, applied.

An objective is `loss_fn(params, batch) -> (loss_sum, (weight, metric_sums))`: a *sum* over its
units (tokens for SFT, pairs for DPO, sequences for GRPO ...) and the number of units. The step
divides by the total weight of the whole batch, so splitting a batch into microbatches
(`grad_accum_steps`) gives the same update as one big batch, up to float rounding.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from si_jax import sharding
from si_jax.train_state import TrainState

LossFn = Callable[[Any, dict], tuple[jax.Array, tuple[jax.Array, dict]]]


def _split_microbatches(batch, accum_steps: int):
  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f'batch size {x.shape[0]} is not divisible by '
                       f'config.optimizer.grad_accum_steps={accum_steps}')
    return x.reshape(accum_steps, x.shape[0] // accum_steps, *x.shape[1:])
  return jax.tree.map(split, batch)


def microbatches_per_iteration() -> int:
  """Microbatches the accumulation loop runs per iteration (its unroll).

  2 on CPU: two microbatches' forward and backward passes are independent, so XLA's CPU runtime
  runs their ops on both cores at once, where one microbatch left a core idle a third of the
  time (profiled). Measured 0-5% faster on TRAIN-STEP and 8% on GRO-STEP's update (interleaved
  A/B), with the same update to the bit (experiments/benchmarks/README.md). 1 elsewhere: two in flight would hold
  two microbatches' activations, and saving that memory is what accumulation is for there.
  """
  return 2 if jax.default_backend() == 'cpu' else 1


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    accum_steps: int = 1, unroll: int | None = None):
  """Returns the pure `step(state, batch) -> (state, metrics)`; jit it with `jit_train_step`.

  unroll: microbatches per iteration of the accumulation loop; None: `microbatches_per_iteration`.
  """
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  unroll = microbatches_per_iteration() if unroll is None else unroll

  def sums_and_grads(params, batch):
    (loss_sum, (weight, metric_sums)), grads = grad_fn(params, batch)
    return loss_sum, weight, metric_sums, grads

  def step(state: TrainState, batch):
    if accum_steps == 1:
      loss_sum, weight, metric_sums, grads = sums_and_grads(state.params, batch)
    else:  # Sum the microbatches' sums and grads in a scan: one compiled body, O(1) memory.
      micro = _split_microbatches(batch, accum_steps)
      first = jax.tree.map(lambda x: x[0], micro)
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(sums_and_grads, state.params, first))
      add = lambda carry, mb: (jax.tree.map(jnp.add, carry, sums_and_grads(state.params, mb)), None)
      (loss_sum, weight, metric_sums, grads), _ = jax.lax.scan(add, zeros, micro, unroll=unroll)
    denom = jnp.maximum(weight, 1e-9)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {k: v / denom for k, v in metric_sums.items()}
    metrics.update(loss=loss_sum / denom, grad_norm=optax.global_norm(grads),
                   learning_rate=schedule(state.step), weight=weight)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def jit_train_step(step, state_shardings: TrainState, mesh):
  """jit with the state donated and pinned to its shardings; batches arrive pre-sharded."""
  return jax.jit(step, in_shardings=(state_shardings, None),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)

"""The train state (params, optimizer state, step, RNG), born sharded on the mesh.

`create` follows the eval_shape -> shardings -> jit(init, out_shardings) recipe, so no device
ever holds a full unsharded copy of the parameters or the optimizer state.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from si_jax import models, sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer updates applied so far.
  params: Any  # pure dict of arrays (see si_jax.models.build).
  opt_state: Any
  rng: jax.Array  # raw uint32[2] key: plain arrays checkpoint everywhere.


def state_shardings(model_cfg: models.TransformerConfig, tx: optax.GradientTransformation,
                    mesh: Mesh, rules=None):
  """(abstract TrainState, matching NamedShardings): optimizer moments follow their params."""
  _, abstract_params = models.abstract_model(model_cfg)
  param_shardings = sharding.named_shardings(models.logical_axes(model_cfg), abstract_params,
                                             mesh, rules)
  abstract = jax.eval_shape(lambda p: TrainState(
      step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
      rng=jax.random.PRNGKey(0)), abstract_params)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract.opt_state, param_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))
  rep = sharding.replicated(mesh)
  return abstract, TrainState(step=rep, params=param_shardings, opt_state=opt_shardings, rng=rep)


def create(model_cfg: models.TransformerConfig, tx: optax.GradientTransformation, mesh: Mesh,
           seed: int, rules=None) -> tuple[models.Model, TrainState, TrainState]:
  """Returns (static model, sharded initial state, the state's shardings)."""
  model, _ = models.abstract_model(model_cfg)
  _, shardings = state_shardings(model_cfg, tx, mesh, rules)

  def init(rng):
    param_rng, state_rng = jax.random.split(rng)
    _, params = models.build(model_cfg, param_rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=state_rng)

  state = jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))
  return model, state, shardings

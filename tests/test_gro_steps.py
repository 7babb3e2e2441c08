"""GRPO and DPO update steps: sharded on a (2, 4) mesh == one device."""

import functools

import jax
import numpy as np
import pytest

from configs import base
from si_jax import optimizers, sharding, train_state
from si_jax.optimization import grpo, preference, train_step
from tests.conftest import tiny_model_config

RNG = np.random.default_rng(0)
B, P, N = 8, 5, 6


def _rollout():
  prompt_mask = np.ones((B, P), bool)
  prompt_mask[::3, :2] = False
  completion_mask = np.arange(N)[None] < RNG.integers(1, N + 1, B)[:, None]
  return {'prompt': RNG.integers(4, 32, (B, P)).astype(np.int32), 'prompt_mask': prompt_mask,
          'completion': RNG.integers(4, 32, (B, N)).astype(np.int32),
          'completion_mask': completion_mask}


def _grpo_batch():
  batch = _rollout()
  batch['advantages'] = RNG.normal(size=B).astype(np.float32)
  batch['old_logprobs'] = np.where(batch['completion_mask'],
                                   RNG.normal(size=(B, N)) - 3, 0).astype(np.float32)
  batch['ref_logprobs'] = batch['old_logprobs'] + 0.1
  return batch


def _dpo_batch():
  a, b = _rollout(), _rollout()
  return {'prompt': a['prompt'], 'prompt_mask': a['prompt_mask'],
          'chosen_completion': a['completion'], 'chosen_mask': a['completion_mask'],
          'rejected_completion': b['completion'], 'rejected_mask': b['completion_mask'],
          'ref_chosen': RNG.normal(size=B).astype(np.float32) - 10,
          'ref_rejected': RNG.normal(size=B).astype(np.float32) - 10}


OBJECTIVES = {
    'grpo': (functools.partial(grpo.grpo_loss, cfg=grpo.GRPOConfig(beta=0.05, eps_high=0.28)),
             _grpo_batch),
    'dpo': (functools.partial(preference.preference_loss,
                              cfg=preference.PreferenceConfig(loss='dpo', beta=0.1)), _dpo_batch),
}


def _run(objective, batches, mesh):
  loss, _ = OBJECTIVES[objective]
  opt_cfg = base.get_config().optimizer
  tx, schedule = optimizers.make_optimizer(opt_cfg, 10)
  model, state, shardings = train_state.create(tiny_model_config(), tx, mesh, seed=0)
  step = train_step.jit_train_step(train_step.make_train_step(
      lambda p, b: loss(model, p, b), tx, schedule), shardings, mesh)
  out = []
  for batch in batches:
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    out.append(jax.device_get(metrics))
  return jax.device_get(state.params), out


@pytest.mark.parametrize('objective', sorted(OBJECTIVES))
def test_step_on_mesh_equals_single_device(objective):
  batches = [OBJECTIVES[objective][1]() for _ in range(2)]
  ref_params, ref_metrics = _run(objective, batches, sharding.make_mesh({}, jax.devices()[:1]))
  params, metrics = _run(objective, batches, sharding.make_mesh({'data': 2, 'tensor': 4}))
  for got, want in zip(metrics, ref_metrics):
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               params, ref_params)
  assert ref_metrics[0]['loss'] != ref_metrics[1]['loss']

"""The SFT update step: sharded == unsharded, grad accumulation invariance, and it learns."""

import functools

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import base
from si_jax import layout, optimizers, sharding, tasks, train, train_state
from si_jax.optimization import sft, train_step
from si_jax.tokenizers import Tokenizer
from tests.helpers import data_parallel, tiny_model_config, tiny_sft_config


@pytest.fixture(scope='module')
def setup():
  task = tasks.get_task('reverse', max_len=6)
  tokenizer = Tokenizer.train([task.alphabet()], 32)
  problems = task.sample(seed=0, n=8 * 3)
  batches = [layout.sft_rows(tokenizer, [p.prompt for p in problems[i:i + 8]],
                                [p.answer for p in problems[i:i + 8]], seq_len=16)
             for i in range(0, 24, 8)]
  opt_cfg = base.get_config().optimizer
  opt_cfg.warmup_steps = 1
  return tiny_model_config(), opt_cfg, batches


@pytest.fixture(scope='module')
def reference(setup):
  """Three steps on one device, no accumulation: what every other layout must reproduce."""
  model_cfg, opt_cfg, batches = setup
  return _run(model_cfg, opt_cfg, batches, {}, devices=jax.devices()[:1])


def _run(model_cfg, opt_cfg, batches, mesh_axes, accum=1, devices=None, unroll=None):
  mesh = sharding.make_mesh(mesh_axes, devices)
  tx, schedule = optimizers.make_optimizer(opt_cfg, total_steps=10)
  model, state, shardings = train_state.create(model_cfg, tx, mesh, seed=0)
  step = train_step.jit_train_step(train_step.make_train_step(
      functools.partial(sft.sft_loss, model), tx, schedule, accum, unroll), shardings, mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return state, losses


@pytest.mark.parametrize('mesh_axes', [{'fsdp': 2, 'tensor': 4}, {'data': 2, 'fsdp': 4}])
def test_sharded_step_equals_single_device(setup, reference, mesh_axes):
  model_cfg, opt_cfg, batches = setup
  ref_state, ref_losses = reference
  state, losses = _run(model_cfg, opt_cfg, batches, mesh_axes)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               jax.device_get(state.params), jax.device_get(ref_state.params))
  # Params and Adam moments are sharded as the rules table says.
  gate = state.params['blocks'][0]['mlp']['gate_DxF']
  kv = state.params['blocks'][0]['attn']['k_DxKxH']
  if mesh_axes.get('tensor', 1) == 4:
    assert gate.sharding.spec == P('fsdp', 'tensor')
    assert gate.addressable_shards[0].data.shape == (32 // 2, 64 // 4)
    assert kv.sharding.spec == P('fsdp', None, None)  # 2 KV heads don't split 4 ways.
  else:
    assert gate.sharding.spec == P('fsdp', None)
  mu = state.opt_state[1][0].mu['blocks'][0]['mlp']['gate_DxF']
  assert mu.sharding.spec == gate.sharding.spec


def test_grad_accumulation_equals_full_batch(setup, reference):
  model_cfg, opt_cfg, batches = setup
  full_state, full_losses = reference
  acc_state, acc_losses = _run(model_cfg, opt_cfg, batches, {}, accum=4,
                               devices=jax.devices()[:1])
  np.testing.assert_allclose(acc_losses, full_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               acc_state.params, full_state.params)


def test_two_microbatches_per_iteration_give_the_same_update_to_the_bit(setup):
  """The CPU default runs two microbatches per accumulation iteration (for speed); the sums
  are still taken in microbatch order, so the update must not change in any bit."""
  model_cfg, opt_cfg, batches = setup
  one = _run(model_cfg, opt_cfg, batches, {}, accum=4, devices=jax.devices()[:1], unroll=1)
  two = _run(model_cfg, opt_cfg, batches, {}, accum=4, devices=jax.devices()[:1], unroll=2)
  assert one[1] == two[1]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(one[0].params),
               jax.device_get(two[0].params))


def test_loss_decreases_and_metrics_present(setup):
  model_cfg, opt_cfg, batches = setup
  opt_cfg = ml_collections.ConfigDict(dict(opt_cfg))
  opt_cfg.learning_rate = 3e-3
  _, losses = _run(model_cfg, opt_cfg, batches * 4, {}, devices=jax.devices()[:1])
  assert np.mean(losses[-3:]) < losses[0] * 0.8, losses


def test_tiny_model_learns_string_reversal(tmp_path):
  """The stack really learns: >= 99% greedy exact match on reversing strings of length 1-8."""
  config = data_parallel(tiny_sft_config(str(tmp_path), num_steps=500, batch_size=64,
                                         eval_size=300))
  config.checkpoint.every_steps = 1000
  result = train.run(config)
  assert result['exact_match'] >= 0.99, result


@pytest.mark.parametrize('schedule', ['cosine', 'wsd', 'constant'])
def test_schedules_warm_up_then_follow_shape(schedule):
  cfg = ml_collections.ConfigDict(dict(base.get_config().optimizer))
  cfg.schedule, cfg.warmup_steps, cfg.learning_rate = schedule, 10, 1.0
  fn = optimizers.make_schedule(cfg, total_steps=100)
  assert float(fn(0)) == 0.0 and abs(float(fn(10)) - 1.0) < 1e-6
  end = float(fn(100))
  assert abs(end - (1.0 if schedule == 'constant' else cfg.end_lr_fraction)) < 1e-6
  if schedule == 'wsd':
    assert float(fn(75)) == pytest.approx(1.0)  # stable phase before the last 20% decay.


def test_schedule_restarts_every_cycle():
  cfg = ml_collections.ConfigDict(dict(base.get_config().optimizer))
  cfg.schedule, cfg.warmup_steps, cfg.learning_rate, cfg.restart_every = 'cosine', 5, 1.0, 20
  fn = optimizers.make_schedule(cfg, total_steps=100)
  cycle = [float(fn(s)) for s in range(20)]
  assert cycle[0] == 0.0 and cycle[5] == pytest.approx(1.0)
  assert cycle[19] < 0.2  # decayed by the cycle's end ...
  assert [float(fn(s)) for s in range(40, 60)] == pytest.approx(cycle)  # ... then starts over.


def test_bad_schedule_is_named():
  cfg = ml_collections.ConfigDict(dict(base.get_config().optimizer))
  cfg.schedule = 'linear'
  with pytest.raises(ValueError, match='schedule'):
    optimizers.make_schedule(cfg, 10)

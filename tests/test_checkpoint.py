"""Checkpoints: bit-exact restore, restore onto another mesh, resume, and clear errors."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from si_jax import checkpoint, optimizers, sharding, train, train_state
from si_jax.tokenizers import Tokenizer
from tests.helpers import tiny_model_config, tiny_sft_config


def _assert_trees_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               jax.device_get(a), jax.device_get(b))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A train state on an 8-way FSDP mesh, perturbed so optimizer moments are nonzero, saved."""
  directory = str(tmp_path_factory.mktemp('ckpt'))
  cfg = tiny_model_config()
  tx, _ = optimizers.make_optimizer(base.get_config().optimizer, 10)
  mesh = sharding.make_mesh({'fsdp': -1})
  _, state, _ = train_state.create(cfg, tx, mesh, seed=3)
  grads = jax.tree.map(lambda p: 0.1 * jax.numpy.ones_like(p), state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  state = state.replace(step=state.step + 7, opt_state=opt_state,
                        params=jax.tree.map(lambda p, u: p + u, state.params, updates))
  ckpt = checkpoint.Checkpointer(directory, async_save=True)
  ckpt.save(7, state, {'round': 2, 'model_config': checkpoint.model_config_dict(cfg)})
  ckpt.close()
  return directory, cfg, tx, state


@pytest.mark.parametrize('mesh_axes', [{'fsdp': -1}, {'fsdp': 2, 'tensor': 4}])
def test_restore_is_bit_exact_on_same_or_other_mesh(saved, mesh_axes):
  directory, cfg, tx, state = saved
  mesh = sharding.make_mesh(mesh_axes)
  abstract, shardings = train_state.state_shardings(cfg, tx, mesh)
  restored, meta = checkpoint.Checkpointer(directory).restore(abstract, shardings, model_cfg=cfg)
  _assert_trees_equal(restored, state)
  assert meta['round'] == 2 and int(restored.step) == 7
  gate = restored.params['blocks'][0]['mlp']['gate_DxF']
  assert gate.sharding.mesh.shape == mesh.shape
  assert gate.sharding.spec == sharding.logical_to_spec(('embed', 'mlp'), gate.shape, mesh)


def test_missing_checkpoint_names_the_directory(tmp_path):
  cfg = tiny_model_config()
  tx, _ = optimizers.make_optimizer(base.get_config().optimizer, 10)
  abstract, shardings = train_state.state_shardings(cfg, tx, sharding.make_mesh({'fsdp': -1}))
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    checkpoint.Checkpointer(str(tmp_path)).restore(abstract, shardings)


def test_mismatched_model_names_the_fields(saved):
  directory, _, tx, _ = saved
  other = tiny_model_config(d_model=48)
  abstract, shardings = train_state.state_shardings(other, tx, sharding.make_mesh({'fsdp': -1}))
  ckpt = checkpoint.Checkpointer(directory)
  with pytest.raises(ValueError, match='d_model'):
    ckpt.restore(abstract, shardings, model_cfg=other)
  # No config to compare: the saved arrays' shapes are compared before anything is read.
  with pytest.raises(ValueError, match=r'does not match.*params/.*checkpoint=\(.*32.*\) '
                                       r'wanted=\(.*48'):
    ckpt.restore(abstract, shardings)


def test_restore_into_another_dtype_casts_and_still_checks_the_rest(tmp_path):
  """A float32 checkpoint restored into bfloat16 params is cast, not called damaged; the arrays
  restored in their own dtype are still checked against their fingerprints."""
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  saved = {'params': {'w': jnp.linspace(0, 1, 12, dtype=jnp.float32).reshape(4, 3)},
           'step': jnp.int32(7)}
  ckpt.save(1, saved)
  ckpt.wait()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {'params': {'w': jax.ShapeDtypeStruct((4, 3), jnp.bfloat16)},
            'step': jax.ShapeDtypeStruct((), jnp.int32)}
  shardings = jax.tree.map(lambda _: device, target)
  restored, _ = ckpt.restore(target, shardings)
  assert restored['params']['w'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(restored['params']['w'],
                                saved['params']['w'].astype(jnp.bfloat16))
  meta = ckpt.read_meta(1)
  meta['fingerprints']['step'] += 1  # As if the step's file had been damaged.
  with pytest.raises(ValueError, match='array step does not match the fingerprint'):
    ckpt._check_fingerprints(1, restored, meta, cast=frozenset({'params/w'}))


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch):
  straight = tiny_sft_config(str(tmp_path / 'straight'), num_steps=20)
  train.run(straight)

  interrupted = tiny_sft_config(str(tmp_path / 'resumed'), num_steps=20)
  real_batch, calls = train.layout.sft_rows, []
  def preempted_at_step_13(*args, **kwargs):
    calls.append(1)
    if len(calls) == 14:
      raise KeyboardInterrupt('simulated preemption')
    return real_batch(*args, **kwargs)
  monkeypatch.setattr(train.layout, 'sft_rows', preempted_at_step_13)
  with pytest.raises(KeyboardInterrupt):
    train.run(interrupted)
  monkeypatch.setattr(train.layout, 'sft_rows', real_batch)
  assert checkpoint.Checkpointer(str(tmp_path / 'resumed' / 'checkpoints')).latest_step() == 10
  assert train.run(interrupted)['step'] == 20  # continued from step 10, not from scratch.
  model_cfg = tiny_model_config(**dict(straight.model))
  tx, _ = optimizers.make_optimizer(straight.optimizer, 20)
  abstract, shardings = train_state.state_shardings(model_cfg, tx, sharding.make_mesh({'fsdp': -1}))
  restore = lambda d: checkpoint.Checkpointer(d).restore(abstract, shardings)[0]
  _assert_trees_equal(restore(str(tmp_path / 'resumed' / 'checkpoints')),
                      restore(str(tmp_path / 'straight' / 'checkpoints')))


def test_tokenizer_that_does_not_match_checkpoint_fails(tmp_path):
  config = tiny_sft_config(str(tmp_path), num_steps=10)
  train.run(config)
  Tokenizer.train(['abcdefghij>XYZ'], 32).save(str(tmp_path))  # 3 pieces more than the run's.
  with pytest.raises(ValueError, match='tokenizer'):
    train.run(config)

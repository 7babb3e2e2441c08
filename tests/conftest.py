"""Test setup: 8 fake CPU devices and a compilation cache (before jax is imported), and shared
tiny configs."""

import os
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# A persistent compilation cache shared by the xdist workers: many tests build the same tiny
# models and steps, and compiling them again is most of a small test's time (the resumed-run
# test: 54 s -> 28 s). Keyed by the HLO and jax version, so a stale entry is never reused.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'si_jax_test_compilation_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_rank_promotion', 'raise')
flags.FLAGS.mark_as_parsed()  # grain workers and absl logging read flags.

from configs import sft_reverse  # pylint: disable=g-import-not-at-top,wrong-import-position
from si_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_model_config(**overrides) -> models.TransformerConfig:
  """The demo's model section, shrunk: 2 layers, d=32, 4 heads over 2 KV heads."""
  base = dict(sft_reverse.get_config().model)
  base.update(vocab_size=32, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
              mlp_dim=64)
  base.update(overrides)
  return models.TransformerConfig(**base)


def tiny_sft_config(workdir: str, **train_overrides):
  """The SFT demo config, shrunk for tests."""
  c = sft_reverse.get_config()
  c.workdir = workdir
  c.mesh.data, c.mesh.fsdp = 2, -1  # 8 fake devices: 2 x 4.
  c.train.num_steps, c.train.batch_size, c.train.log_every, c.train.eval_size = 20, 16, 10, 32
  c.model.d_model, c.model.head_dim, c.model.mlp_dim = 64, 16, 192
  c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-2, 50
  c.checkpoint.every_steps = 10
  c.checkpoint.async_save = False
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


def data_parallel(config):
  """Puts a learning test's config on the pure data-parallel mesh (data=-1).

  On fake CPU devices FSDP's parameter gathers dominate a tiny model's step: 35 ms data-parallel,
  78 ms on data=2 x fsdp=4, 122 ms on fsdp=8 (3-layer d=64 SFT step, batch 64, this machine).
  Learning tests check learning; sharding has its own equality tests.
  """
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
  return config


@pytest.fixture(scope='session')
def tiny_cfg():
  return tiny_model_config()

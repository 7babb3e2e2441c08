"""Test setup: 8 fake CPU devices and a compilation cache (before jax is imported); what tests
build is in tests/helpers.py."""

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

from tests import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='session')
def tiny_cfg():
  return helpers.tiny_model_config()


@pytest.fixture(scope='session')
def weak_base(tmp_path_factory) -> str:
  """The workdir of the weak base model every GRO and test-time learning test starts from
  (helpers.weak_base_config), built once per test run: under xdist in the workers' common
  parent temp dir (this run's alone), else in the session's."""
  root = tmp_path_factory.getbasetemp()
  return helpers.build_weak_base(str(root.parent if 'PYTEST_XDIST_WORKER' in os.environ else root))

"""Configs and the entry point: every config loads; bad keys, values and meshes fail by name."""

import glob
import os
import subprocess
import sys

import pytest

from configs import base
from si_jax import config_checks, experiment, lifecycle, sharding
from si_jax.optimization import grpo_update
from si_jax.models import TransformerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))))
def test_every_config_builds_a_model_config(path):
  name = os.path.basename(path)[:-3]
  if name.startswith('_'):
    return
  module = __import__(f'configs.{name}', fromlist=['get_config'])
  config = module.get_config()
  TransformerConfig.from_config_dict(config.model)
  if name != 'base':
    assert 'python -m si_jax.main --config=configs/' in module.__doc__  # launch command.


_VARIANTS = {'self_train_arithmetic': ('', 'small', 'tiny'), 'sft_reverse': ('', 'tiny')}


def _configs():
  from si_jax.optimization import grpo  # pylint: disable=g-import-not-at-top
  variants = {**_VARIANTS, 'grpo_addition': tuple(grpo.ALGORITHMS)}
  for path in sorted(glob.glob(os.path.join(ROOT, 'configs', '*.py'))):
    name = os.path.basename(path)[:-3]
    if name not in ('__init__', 'base'):
      yield from ((name, v) for v in variants.get(name, ('',)))


@pytest.mark.parametrize('name,variant', list(_configs()))
def test_every_job_config_passes_the_checks_its_job_runs(name, variant):
  """Each config and variant: every value passes config_checks, the task builds, base.py's
  shared keys are all there (no section replaced wholesale), and the job's own section parses
  as its job reads it, before any work."""
  module = __import__(f'configs.{name}', fromlist=['get_config'])
  config = module.get_config(variant) if variant else module.get_config()
  shared = base.get_config()
  for section in ('data', 'train', 'optimizer', 'mesh', 'checkpoint'):
    assert set(shared[section]) <= set(config[section]), (section, set(shared[section]))
  assert set(shared) <= set(config)
  config_checks.check(config)
  task = experiment.make_task(config)
  assert task.sample(0, 4)
  if config.job == 'self_train':
    lifecycle.check(config.loop)
  elif config.job == 'grpo':
    grpo_update.RLConfig.from_config(config.rl)


def _main(*flags):
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'si_jax.main', *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('flag, expected', [
    ('--config.model.num_expertz=4', 'num_expertz'),  # unknown key
    ('--config.train.num_steps=many', 'num_steps'),  # ill-typed value
    ('--config.model.activation=relu', 'activation'),  # value outside the allowed set
    ('--config.mesh.tensor=3', 'devices'),  # a mesh that does not fit the machine
])
def test_bad_flags_stop_before_compiling_and_name_the_key(flag, expected, tmp_path):
  result = _main(flag, f'--config.workdir={tmp_path}')
  assert result.returncode != 0
  assert expected in result.stderr
  assert 'sft:' not in result.stderr  # stopped before the training loop started.


def test_mesh_sizes():
  import jax  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh({'data': 2, 'fsdp': -1, 'tensor': 2})
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  with pytest.raises(ValueError, match=f'{len(jax.devices())} devices'):
    sharding.make_mesh({'fsdp': 3})
  with pytest.raises(ValueError, match='unknown axes'):
    sharding.make_mesh({'model': 2})

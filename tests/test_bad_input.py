"""Bad input, one case each: the error names the field (or file) and the fix, and nothing on disk
is lost. Elsewhere: unknown/ill-typed flags and mesh (test_config), other model size and other
tokenizer vocab (test_checkpoint), store records (test_store), HF checkpoints (test_hf)."""

import glob
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax import checkpoint, config_checks, experiment, models
from si_jax.data import store as store_lib
from si_jax.optimization import grpo, grpo_update
from si_jax.sampling.sampler import Sampler
from si_jax.tokenizers import Tokenizer
from tests.helpers import tiny_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- The command line: stops before any work, names the key ---------------------------------------

CLI_CASES = {
    'negative batch': (['--config.train.batch_size=-4'], 'config.train.batch_size=-4'),
    'zero steps': (['--config.train.num_steps=0'], 'config.train.num_steps=0'),
    'share above 1': (['--config.loop.min_agreement=1.5'], 'config.loop.min_agreement=1.5'),
    'negative rate': (['--config.optimizer.learning_rate=-0.001'], 'learning_rate'),
    'GRPO group of 1': (['--config=configs/grpo_addition.py', '--config.rl.group_size=1'],
                        'config.rl.group_size=1'),
    'oversized mesh': (['--config.mesh.fsdp=64'], 'needs 64 devices'),
    'missing config file': (['--config=configs/no_such_config.py'], 'no_such_config.py'),
    'syntax error': (['--config={syntax}'], 'broken_config.py'),
    'unknown job': (['--config.job=distill'], "config.job='distill'"),
    'unknown variant': (['--config=configs/self_train_arithmetic.py:huge'], "variant 'huge'"),
}


def test_bad_command_lines_stop_before_any_work_and_name_the_key(tmp_path):
  broken = tmp_path / 'broken_config.py'
  broken.write_text('def get_config(:\n  pass\n')
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  runs = {}
  for name, (flags, _) in CLI_CASES.items():
    workdir = tmp_path / name.replace(' ', '_')
    flags = [f.format(syntax=broken) for f in flags] + [f'--config.workdir={workdir}']
    runs[name] = (workdir, subprocess.Popen(
        [sys.executable, '-m', 'si_jax.main', *flags], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  for name, (workdir, proc) in runs.items():
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, name
    assert CLI_CASES[name][1] in out, f'{name}:\n{out[-1500:]}'
    assert 'sft:' not in out and not glob.glob(f'{workdir}/**/checkpoints/*', recursive=True)


def test_every_bad_value_is_listed_at_once():
  from configs import self_train_arithmetic  # pylint: disable=g-import-not-at-top
  config = self_train_arithmetic.get_config()
  config.loop.num_rounds, config.data.seed_set_size, config.loop.seed_mix_ratio = -1, -5, 2.0
  found = config_checks.problems(config)
  assert [p.split(':')[0] for p in found] == [
      'config.data.seed_set_size=-5', 'config.loop.num_rounds=-1', 'config.loop.seed_mix_ratio=2.0']


def test_read_only_workdir_fails_before_work_and_is_left_alone(tmp_path):
  """Root ignores file modes, so the workdir is made read-only by a mount (bubblewrap)."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  (workdir / 'keep.txt').write_text('results')
  probe = ('from si_jax import experiment\n'
           f'experiment.check_workdir({str(workdir)!r})')
  result = subprocess.run(['bwrap', '--bind', '/', '/', '--ro-bind', str(workdir), str(workdir),
                           '--dev', '/dev', '--', sys.executable, '-c', probe], cwd=ROOT,
                          capture_output=True, text=True, check=False)
  assert result.returncode != 0
  assert 'config.workdir=' in result.stderr and 'not writable' in result.stderr
  assert os.listdir(workdir) == ['keep.txt'] and (workdir / 'keep.txt').read_text() == 'results'


# --- Checkpoints: damage is named, nothing is deleted, the previous one still restores -----------


@pytest.fixture
def two_checkpoints(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), max_to_keep=3, async_save=False)
  states = {step: {'w': jnp.arange(4096, dtype=jnp.float32).reshape(64, 64) * step,
                   'b': jnp.ones(3) * step} for step in (1, 2)}
  for step, state in states.items():
    ckpt.save(step, state, {'step': step}, force=True)
  ckpt.close()
  return str(tmp_path / 'ckpt'), states


def _largest_array_file(directory: str) -> str:
  return max(glob.glob(f'{directory}/2/state/**/d/*', recursive=True), key=os.path.getsize)


def _flip_a_byte(directory):
  path = _largest_array_file(directory)
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0xFF
  open(path, 'wb').write(bytes(data))


def _truncate(directory):
  path = _largest_array_file(directory)
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])


DAMAGE = {
    'flipped byte in an array': _flip_a_byte,
    'truncated array file': _truncate,
    'empty step directory': lambda d: [shutil.rmtree(f'{d}/2'), os.makedirs(f'{d}/2')],
    'missing state': lambda d: shutil.rmtree(f'{d}/2/state'),
    'garbled metadata': lambda d: open(f'{d}/2/meta/metadata', 'w').write('{"step": '),
}


@pytest.mark.parametrize('damage', sorted(DAMAGE))
def test_damaged_checkpoint_is_named_kept_and_skippable(two_checkpoints, damage):
  directory, states = two_checkpoints
  DAMAGE[damage](directory)
  files_before = sorted(glob.glob(f'{directory}/**', recursive=True))
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), states[1])
  shardings = jax.tree.map(lambda x: x.sharding, states[1])
  with pytest.raises(ValueError, match=rf'{directory}/2 is damaged.*Move that directory aside.*'
                                       r'previous checkpoint \(1\)'):
    ckpt.restore(abstract, shardings)
  ckpt.close()
  assert sorted(glob.glob(f'{directory}/**', recursive=True)) == files_before  # Nothing lost.
  shutil.move(f'{directory}/2', f'{directory}.aside')  # The fix the error names.
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  restored, meta = ckpt.restore(abstract, shardings)
  ckpt.close()
  assert meta['step'] == 1
  jax.tree.map(np.testing.assert_array_equal, restored, states[1])


def test_fingerprints_are_the_same_on_any_mesh():
  x = jnp.arange(64 * 48, dtype=jnp.float32).reshape(64, 48) / 7
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ('a', 'b'))
  spec = jax.sharding.PartitionSpec('a', 'b')
  sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, spec))
  assert checkpoint.fingerprints({'x': x}) == checkpoint.fingerprints({'x': sharded})
  assert checkpoint.fingerprints({'x': x}) != checkpoint.fingerprints({'x': x.T.reshape(64, 48)})


# --- Store, tokenizer ----------------------------------------------------------------------------


def test_truncated_store_record_is_named_and_other_rounds_read(tmp_path):
  store = store_lib.DataStore(str(tmp_path / 'store'))
  examples = lambda r: [dict(prompt=f'p{i}', completion='c', reward=1.0, scores={}, source='self',
                             round=r, model_step=0, problem_id=i) for i in range(20)]
  store.write_round(0, examples(0))
  store.write_round(1, examples(1))
  record = store.data_path(1)
  data = open(record, 'rb').read()
  open(record, 'wb').write(data[:len(data) // 2])
  with pytest.raises(ValueError, match='does not match the sha256 in its manifest'):
    store.read_round(1)
  assert store.read_round(0) == examples(0)


def test_tokenizer_bad_corpus_and_file(tmp_path):
  with pytest.raises(ValueError, match='corpus is empty'):
    Tokenizer.train([], vocab_size=16)
  with pytest.raises(ValueError, match='corpus is empty'):
    Tokenizer.train(['', ''], vocab_size=16)
  (tmp_path / 'tokenizer.model').write_bytes(b'not a model')
  with pytest.raises(ValueError, match=r'tokenizer.model is not a sentencepiece model.*restore'):
    Tokenizer.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='no sentencepiece model'):
    Tokenizer.load(str(tmp_path / 'elsewhere'))


# --- Sampler -------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_sampler():
  cfg = tiny_model_config()
  model, params = models.build(cfg, jax.random.PRNGKey(0))
  return Sampler(model), params, Tokenizer.train(['0123456789+='], vocab_size=cfg.vocab_size)


@pytest.mark.parametrize('prompts, error, match', [
    (['12+3=', 'a\udcffb'], ValueError, r'text 1 is not valid Unicode.*errors="replace"'),
    ([b'12+3='], TypeError, r'text 0 is a bytes, not a str: decode it first'),
    ([], ValueError, 'prompt list is empty'),
])
def test_sampler_bad_text_prompts(tiny_sampler, prompts, error, match):
  sampler, params, tokenizer = tiny_sampler
  with pytest.raises(error, match=match):
    sampler.generate(params, tokenizer, prompts, max_new_tokens=4)


@pytest.mark.parametrize('prompts, kwargs, match', [
    ([[2] * 30], dict(max_new_tokens=8, max_cache_len=32), r'30 tokens.*exceeds the cache'),
    ([[2, 5], []], dict(max_new_tokens=4), 'a prompt is empty'),
    ([[2, 999]], dict(max_new_tokens=4), r'token id 999 is outside the model vocab.*tokenizer'),
    ([[2, 5]], dict(max_new_tokens=0), 'max_new_tokens=0'),
])
def test_sampler_bad_token_prompts(tiny_sampler, prompts, kwargs, match):
  sampler, params, _ = tiny_sampler
  with pytest.raises(ValueError, match=match):
    sampler.sample(params, prompts, **kwargs)


# --- Rewards and GRPO ----------------------------------------------------------------------------


class _Rollout:
  group_size = 4
  arrays = {'completion_mask': np.ones((8, 3), bool)}
  finish_reason = np.zeros(8, np.int32)


@pytest.fixture
def rl_config():
  from configs import grpo_addition  # pylint: disable=g-import-not-at-top
  return grpo_addition.get_config().rl


def test_nan_reward_is_named(rl_config):
  reward = np.array([1, 0, np.nan, 1, 0, 0, 1, np.inf], np.float32)
  with pytest.raises(ValueError, match=r"config.rl.reward='verifiable' returned 2 non-finite "
                                       r'rewards.*sample 2'):
    grpo_update.build_batch(_Rollout(), reward, grpo_update.RLConfig.from_config(rl_config))


@pytest.mark.parametrize('estimator', sorted(grpo.ADVANTAGE_ESTIMATORS))
@pytest.mark.parametrize('std_scale', grpo.STD_SCALES)
def test_all_equal_rewards_give_zero_finite_advantages(estimator, std_scale):
  """A group whose samples all score the same carries no signal: advantages exactly 0 (no 0/0),
  so the policy-gradient term of the update is 0 for it."""
  rewards = np.array([[1.0] * 4, [0.0] * 4, [0.5] * 4], np.float32)
  advantages = np.asarray(grpo.ADVANTAGE_ESTIMATORS[estimator](rewards, std_scale))
  np.testing.assert_array_equal(advantages, np.zeros_like(rewards))


def test_group_of_one(rl_config):
  with rl_config.unlocked():
    rl_config.group_size = 1
  assert any('config.rl.group_size=1' in p for p in config_checks.problems({'rl': rl_config}))
  with pytest.raises(ValueError, match=r'at least 2 samples per group \(config.rl.group_size\)'):
    grpo.ADVANTAGE_ESTIMATORS['rloo'](np.ones((3, 1)), 'none')


def test_missing_warm_start_names_the_path(tmp_path):
  cfg = tiny_model_config()
  _, abstract = models.abstract_model(cfg)
  with pytest.raises(FileNotFoundError, match=rf'no checkpoint in {tmp_path}/nowhere/checkpoints'):
    experiment.load_params(str(tmp_path / 'nowhere'), cfg, None)

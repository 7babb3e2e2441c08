"""The round-stamped data store: exact round trips, selection policies, crash safety, grain."""

import os

import grain
import numpy as np
import pytest

from si_jax.data import store as store_lib


def make_examples(round_idx, n, source='self'):
  return [dict(prompt=f'r{round_idx} q{i} ünïcødé ✓', completion=f'answer {i} — 数学',
               reward=[0.1, 1 / 3, -2.5e-300][i % 3], scores={} if i % 2 else {'len': 1 / 7},
               source=source, round=round_idx, model_step=100 * round_idx + i, problem_id=i)
          for i in range(n)]


@pytest.fixture
def store(tmp_path):
  s = store_lib.DataStore(str(tmp_path / 'data'))
  s.write_round(0, make_examples(0, 3, source='seed'))
  s.write_round(1, make_examples(1, 4))
  return s


def test_round_trip_is_exact(store):
  assert store.rounds() == [0, 1]
  assert store.read_round(0) == make_examples(0, 3, source='seed')
  assert store.read_round(1) == make_examples(1, 4)
  assert store.read_round(0)[1]['reward'] == 1 / 3
  assert store.manifest(1)['count'] == 4
  assert not [n for n in os.listdir(store.directory) if n.startswith('.')]  # No temp files left.


def test_numpy_values_become_python(tmp_path):
  s = store_lib.DataStore(str(tmp_path))
  ex = make_examples(0, 1)[0] | {'reward': np.float64(0.1), 'model_step': np.int64(7)}
  s.write_round(0, [ex])
  got = s.read_round(0)[0]
  assert got['reward'] == 0.1 and type(got['reward']) is float
  assert got['model_step'] == 7 and type(got['model_step']) is int


def test_select_policies_keep_provenance(store):
  replace = store.select(1, 'replace')
  assert replace == make_examples(1, 4)
  accumulate = store.select(1, 'accumulate')
  assert accumulate == make_examples(0, 3, source='seed') + make_examples(1, 4)
  assert store.select(0, 'accumulate') == make_examples(0, 3, source='seed')

  real = make_examples(-1, 10, source='real')
  mixed = store.select(1, 'mix', real_examples=real, mix_ratio=0.5, seed=3)
  assert len(mixed) == 8
  assert [ex['source'] for ex in mixed].count('real') == 4
  assert mixed[:4] == make_examples(1, 4)
  assert all(ex in real for ex in mixed[4:])
  assert mixed == store.select(1, 'mix', real_examples=real, mix_ratio=0.5, seed=3)
  mostly_real = store.select(1, 'mix', real_examples=real[:2], mix_ratio=0.75)
  assert [ex['source'] for ex in mostly_real].count('real') == 12  # Sampled with replacement.
  for ex in replace + accumulate + mixed:
    assert {'source', 'round', 'model_step'} <= ex.keys()

  with pytest.raises(ValueError, match="'keep_all'.*replace, accumulate, mix"):
    store.select(1, 'keep_all')
  with pytest.raises(ValueError, match='real_examples'):
    store.select(1, 'mix')


def test_crash_mid_write_leaves_earlier_rounds(store, monkeypatch):
  real_replace = os.replace

  def crash(src, dst):
    if 'round_00002' in dst:
      raise OSError('simulated crash')
    real_replace(src, dst)

  monkeypatch.setattr(os, 'replace', crash)
  with pytest.raises(OSError, match='simulated crash'):
    store.write_round(2, make_examples(2, 5))
  monkeypatch.setattr(os, 'replace', real_replace)
  assert store.rounds() == [0, 1]
  assert store.read_round(0) == make_examples(0, 3, source='seed')
  assert store.read_round(1) == make_examples(1, 4)
  store.write_round(2, make_examples(2, 5))
  assert store.rounds() == [0, 1, 2]
  assert store.read_round(2) == make_examples(2, 5)


def test_crash_before_manifest_means_absent(store):
  os.remove(store.manifest_path(1))  # Data file in place, manifest never written.
  assert store.rounds() == [0]
  with pytest.raises(FileNotFoundError, match=r'available rounds: \[0\]'):
    store.read_round(1)
  store.write_round(1, make_examples(1, 2))  # Incomplete: rewritten without overwrite=True.
  assert store.read_round(1) == make_examples(1, 2)


def test_reads_through_grain(store):
  ds = grain.MapDataset.source(store.data_source([0, 1]))
  assert len(ds) == 7
  assert list(ds) == make_examples(0, 3, source='seed') + make_examples(1, 4)
  assert len(store.data_source([])) == 0


def test_bad_input(store):
  bad = make_examples(2, 3)
  del bad[1]['reward']
  with pytest.raises(ValueError, match="example 1 is missing required field 'reward'"):
    store.write_round(2, bad)
  with pytest.raises(ValueError, match='round=1 but is written to round 2'):
    store.write_round(2, make_examples(1, 2))
  with pytest.raises(FileNotFoundError, match=r'no complete round 5 in .*data.*\[0, 1\]'):
    store.read_round(5)
  with pytest.raises(FileNotFoundError, match=r'\[0, 1\]'):
    store.data_source([0, 5])
  with pytest.raises(FileExistsError, match='overwrite=True'):
    store.write_round(1, make_examples(1, 2))
  store.write_round(1, make_examples(1, 2), overwrite=True)
  assert store.read_round(1) == make_examples(1, 2)
  assert store.rounds() == [0, 1]

"""kill -9 anywhere, rerun, same result: the tiny main job SIGKILLed in its base phase, in a
round's SFT and in the middle of a checkpoint save (tests/killed_run.py), then rerun with the
same command, ends with the same history as a run never interrupted; no round is lost or
duplicated, and every stored round reads back whole."""

import json
import os
import signal
import subprocess
import sys

import pytest

from si_jax.data.store import DataStore

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'killed_run.py')
MOMENTS = ('base', 'round', 'save')


def _start(workdir, moment=''):
  return subprocess.Popen([sys.executable, SCRIPT, str(workdir), moment], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _history(proc) -> list[dict]:
  out, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


@pytest.mark.xdist_group('kill_resume')
def test_killed_anywhere_and_rerun_gives_the_uninterrupted_history(tmp_path):
  # The reference runs first and alone: it fills the compilation cache the other six read.
  reference = _history(_start(tmp_path / 'uninterrupted'))
  killed = {m: _start(tmp_path / m, m) for m in MOMENTS}
  for moment, proc in killed.items():
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == -signal.SIGKILL, f'{moment} was not killed:\n{err[-2000:]}'
  assert not os.path.exists(tmp_path / 'base' / 'checkpoints')  # Killed before the loop.
  assert not os.path.exists(tmp_path / 'round' / 'rounds.json') or len(
      json.load(open(tmp_path / 'round' / 'rounds.json'))) < len(reference)
  resumed = {m: _start(tmp_path / m) for m in MOMENTS}
  for moment, proc in resumed.items():
    history = _history(proc)
    assert history == reference, moment
    workdir = tmp_path / moment
    steps = [json.loads(line)['step'] for line in open(workdir / 'metrics.jsonl')]
    assert steps == sorted(set(steps)) == [row['round'] for row in reference], moment
    store = DataStore(str(workdir / 'store'))
    assert store.rounds() == DataStore(str(tmp_path / 'uninterrupted' / 'store')).rounds()
    for r in store.rounds():  # Each checks its sha256 against its manifest.
      assert store.read_round(r) == DataStore(
          str(tmp_path / 'uninterrupted' / 'store')).read_round(r), (moment, r)

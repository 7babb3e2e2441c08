"""The tiny main job (tests/test_lifecycle.py), optionally SIGKILLed by itself at one moment.

  python tests/killed_run.py WORKDIR [base|round|save]

base:  right after the base phase's first checkpoint (step 40 of 80);
round: in round 2's SFT, after round 2's data was stored;
save:  while round 1's checkpoint is being written (its temporary directory exists).
SIGKILL leaves no chance to clean up: no finally, no atexit, background writes cut mid-way.
Without a moment it runs (or resumes) to the end and prints the history as JSON.
"""

import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from si_jax import checkpoint, main  # pylint: disable=wrong-import-position
from si_jax.optimization import stage as optimization_stage  # pylint: disable=wrong-import-position
from tests.helpers import tiny_loop_config  # pylint: disable=wrong-import-position


def _die():
  os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_first_base_checkpoint():
  real_save = checkpoint.Checkpointer.save

  def save(self, step, *args, **kwargs):
    out = real_save(self, step, *args, **kwargs)
    if os.sep + 'base' + os.sep in self.directory + os.sep and step == 40:
      self.wait()
      _die()
    return out
  checkpoint.Checkpointer.save = save


def _kill_in_round_two_training():
  real_train_arm, calls = optimization_stage.train, []

  def train_arm(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      _die()
    return real_train_arm(*args, **kwargs)
  optimization_stage.train = train_arm


def _kill_during_round_one_save(workdir: str):
  """A watcher thread kills the process once the loop's checkpoint dir holds a temporary
  (uncommitted) step: the save is under way."""
  directory = os.path.join(workdir, 'checkpoints')

  def watch():
    while True:
      names = os.listdir(directory) if os.path.isdir(directory) else []
      if any('tmp' in n for n in names) and any(n.isdigit() for n in names):  # Round 1's save.
        _die()
      time.sleep(0.0005)
  threading.Thread(target=watch, daemon=True).start()


def main_(workdir: str, moment: str = ''):
  config = tiny_loop_config(workdir)
  config.checkpoint.every_steps = 40
  config.checkpoint.async_save = False
  hooks = {'base': _kill_after_first_base_checkpoint, 'round': _kill_in_round_two_training,
           'save': lambda: _kill_during_round_one_save(workdir), '': lambda: None}
  hooks[moment]()
  result = main.run(config)
  print(json.dumps(result['history']))


if __name__ == '__main__':
  main_(*sys.argv[1:3])

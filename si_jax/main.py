"""Entry point, intentionally kept short: flags -> config -> the job's `run(config)`.

  python -m si_jax.main        # the main job: configs/self_train_arithmetic.py
  python -m si_jax.main --config=configs/sft_reverse.py --config.train.num_steps=500
  python -m si_jax.main --config.init_from_hf=/path/to/hf_model   # start from an HF checkpoint
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'configs', 'self_train_arithmetic.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Experiment config file.',
                                          lock_config=True)


def run(config):
  """Runs `config.job`; GRO jobs first get a base model (config.init_from, or trained here)."""
  # pylint: disable=g-import-not-at-top
  from si_jax import config_checks, experiment, lifecycle, train
  from si_jax.models import hf
  from si_jax.optimization import online_rl, rejection_sampling, self_play, self_rewarding
  jobs = {'sft': train.run, 'grpo': online_rl.run, 'rejection_sampling': rejection_sampling.run,
          'self_rewarding': self_rewarding.run, 'spin': self_play.run,
          'self_train': lifecycle.run}
  if config.job not in jobs:
    raise app.UsageError(f'config.job={config.job!r} is not one of {sorted(jobs)}')
  config_checks.check(config)
  experiment.check_workdir(config.workdir)
  if config.init_from_hf:  # Its architecture replaces config.model; its weights the base phase.
    hf.apply_to_config(config, config.init_from_hf)
  if config.job != 'sft':  # GRO jobs start from a base model: given, or trained first.
    with config.unlocked():
      config.init_from = train.warm_start(config)
  return jobs[config.job](config)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:  # orbax logs every save at INFO; keep the bar readable.
    logging.set_verbosity(logging.WARNING)
  run(_CONFIG.value)


if __name__ == '__main__':
  app.run(main)

"""The main job on several seeds: base, self-trained, best control, verifier ceiling, variants.

  python -m experiments.self_train.seeds --seeds=0,1,2 --workdir=/tmp/si_jax/seeds
  python -m experiments.self_train.seeds --seeds=0,1 --config.loop.num_rounds=4   # any override
  python -m experiments.self_train.seeds --seeds=1 --arms=agree_0.75,from_base    # variants

Per seed, runs of the main job (configs/self_train_arithmetic.py unless --config says otherwise):
  self     the default, label-free loop; its control arm is the tuned control (learning rate and
           schedule swept on the seed set, chosen by held-out seed loss, si_jax/optimization/
           tuned_sft.py), evaluated on the same fresh benchmarks;
  --arms   the same loop with one change each (ARMS below; 'ceiling' is `loop.label=verifier`:
           every verified sample is kept). Each reuses the self run's base and control, so only
           the change differs, and is scored against the same control.
The table reports hardest-level accuracy (%) at the last round and the paired per-problem
difference self - control on the last benchmark with its 95% interval; the pooled row averages
the seeds (their benchmarks are independent, so the errors add in quadrature). Writes
<workdir>/seeds.md and seeds.json.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

from absl import app, flags, logging

from si_jax import main as si_main  # Defines --config (the main job's by default).
from si_jax import report

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds: each trains its own base.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/si_jax/seeds', 'One folder per seed and arm.')
# One change to the main job each, from the same base and control.
ARMS = {
    'ceiling': {'loop.label': 'verifier'},
    'unanimity': {'loop.min_agreement': 1.0},
    'agree_0.875': {'loop.min_agreement': 0.875},
    'agree_0.75': {'loop.min_agreement': 0.75},
    'agree_0.5': {'loop.min_agreement': 0.5},
    'train_rewrites': {'loop.train_rewrites': True},
    'from_base': {'loop.start': 'base'},
    'constant_lr': {'optimizer.schedule': 'constant'},
    'no_seed_mix': {'loop.seed_mix_ratio': 0.0},
    'seed_mix_0.5': {'loop.seed_mix_ratio': 0.5},
    'lr_1e-3': {'optimizer.learning_rate': 1e-3},
    'lr_5e-4': {'optimizer.learning_rate': 5e-4},
}
_ARMS = flags.DEFINE_list('arms', ['ceiling'], f'Variants run beside self: {", ".join(ARMS)}.')


def run_seed(config, seed: int, workdir: str, arms: list[str]) -> dict:
  """The runs of one seed: a row of the table (accuracies in [0, 1])."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
    config.workdir = os.path.join(workdir, f'seed_{seed}', 'self')
  start = time.time()
  result = si_main.run(config)
  row = {'seed': seed, 'base': result['base_hardest'], 'self': result['self_hardest'],
         'control': result['control_hardest'], 'gain': result['gain_over_control'],
         'control_arm': result['control']['chosen'], 'minutes': (time.time() - start) / 60}
  for arm in arms:
    variant = config.copy_and_resolve_references()
    with variant.unlocked():
      variant.workdir = os.path.join(workdir, f'seed_{seed}', arm)
      variant.init_from = config.init_from  # The same base.
      for key, value in ARMS[arm].items():
        section, field = key.split('.')
        variant[section][field] = value
    control = os.path.join(variant.workdir, 'control')
    if not os.path.exists(control):  # The same control.
      shutil.copytree(os.path.join(config.workdir, 'control'), control)
    result = si_main.run(variant)
    row[arm] = {'self': result['self_hardest'], 'gain': result['gain_over_control']}
  return row


def _pooled_gain(gains: list[dict]) -> dict:
  """Mean paired gain over seeds with its 95% interval (independent benchmarks: the standard
  errors add in quadrature)."""
  n = len(gains)
  mean = sum(g['mean'] for g in gains) / n
  se = math.sqrt(sum(((g['high'] - g['low']) / (2 * 1.96)) ** 2 for g in gains)) / n
  return {'mean': mean, 'low': mean - 1.96 * se, 'high': mean + 1.96 * se}


def pooled(rows: list[dict], arms: list[str]) -> dict:
  """The mean over seeds of each column."""
  mean = lambda values: sum(values) / len(values)
  out = {'seed': 'mean', 'gain': _pooled_gain([r['gain'] for r in rows])}
  for key in ('base', 'self', 'control'):
    out[key] = mean([r[key] for r in rows])
  for arm in arms:
    out[arm] = {'self': mean([r[arm]['self'] for r in rows]),
                'gain': _pooled_gain([r[arm]['gain'] for r in rows])}
  return out


def table(rows: list[dict], arms: list[str], level: str) -> str:
  """Hardest-level accuracy (%) per seed; each arm as `accuracy (paired gain over the control,
  95% CI)`."""
  head = (['seed', f'base {level}', f'best control {level}', 'control (lr, schedule, rounds)',
           f'self {level} (self - control, paired 95% CI)', 'self - base'] +
          [f'{arm} {level} (- control)' for arm in arms] + ['minutes'])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  pct = lambda x: f'{100 * x:.1f}'
  with_gain = lambda acc, g: (f"{pct(acc)} ({100 * g['mean']:+.1f}; {100 * g['low']:+.1f}, "
                              f"{100 * g['high']:+.1f})")
  for r in rows:
    chosen = r.get('control_arm')
    cells = [str(r['seed']), pct(r['base']), pct(r['control']),
             f"{chosen['learning_rate']:g}, {chosen['schedule']}, {chosen['rounds']}"
             if chosen else '-', with_gain(r['self'], r['gain']),
             f"{100 * (r['self'] - r['base']):+.1f}"]
    cells += [with_gain(r[arm]['self'], r[arm]['gain']) for arm in arms]
    cells.append(f"{r['minutes']:.1f}" if 'minutes' in r else '-')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  unknown = sorted(set(_ARMS.value) - set(ARMS))
  if unknown:
    raise app.UsageError(f'--arms: unknown {unknown}; choose from {sorted(ARMS)}')
  rows = [run_seed(config, int(s), _WORKDIR.value, _ARMS.value) for s in _SEEDS.value]
  rows.append(pooled(rows, _ARMS.value))
  text = table(rows, _ARMS.value, report.level_key(config.task.max_digits))
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, 'seeds.md'), 'w') as f:
    f.write(text + '\n')
  with open(os.path.join(_WORKDIR.value, 'seeds.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  print(text)


if __name__ == '__main__':
  app.run(main)

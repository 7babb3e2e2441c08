"""The main job on several seeds: base, self-trained, best control and verifier ceiling.

  python -m experiments.self_train.seeds --seeds=0,1,2 --workdir=/tmp/si_jax/seeds
  python -m experiments.self_train.seeds --seeds=0,1 --config.loop.num_rounds=4   # any override

Per seed, two runs of the main job (configs/self_train_arithmetic.py unless --config says
otherwise):
  self     the default, label-free loop; its control arm is the tuned control (learning rate and
           schedule swept on the seed set, chosen by held-out seed loss, si_jax/optimization/
           tuned_sft.py), evaluated on the same fresh benchmarks;
  ceiling  the same loop from the same base with `loop.label=verifier`: every verified sample is
           kept. It reuses the first run's control checkpoint, so only the labels differ.
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
_CEILING = flags.DEFINE_boolean('ceiling', True, 'Also run the verifier-labelled ceiling.')


def run_seed(config, seed: int, workdir: str, ceiling: bool) -> dict:
  """Both runs of one seed: a row of the table (accuracies in [0, 1])."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.seed = seed
    config.workdir = os.path.join(workdir, f'seed_{seed}', 'self')
  start = time.time()
  result = si_main.run(config)
  row = {'seed': seed, 'base': result['base_hardest'], 'self': result['self_hardest'],
         'control': result['control_hardest'], 'gain': result['gain_over_control'],
         'control_arm': result['control']['chosen'], 'minutes': (time.time() - start) / 60}
  if ceiling:
    verifier = config.copy_and_resolve_references()
    with verifier.unlocked():
      verifier.workdir = os.path.join(workdir, f'seed_{seed}', 'ceiling')
      verifier.init_from = config.init_from  # The same base.
      verifier.loop.label = 'verifier'
    control = os.path.join(verifier.workdir, 'control')
    if not os.path.exists(control):
      shutil.copytree(os.path.join(config.workdir, 'control'), control)
    row['ceiling'] = si_main.run(verifier)['self_hardest']
  return row


def pooled(rows: list[dict]) -> dict:
  """Mean over seeds of each column, and of the paired gain with its 95% interval."""
  n = len(rows)
  mean = lambda key: sum(r[key] for r in rows) / n
  gain = sum(r['gain']['mean'] for r in rows) / n
  se = math.sqrt(sum(((r['gain']['high'] - r['gain']['low']) / (2 * 1.96)) ** 2
                     for r in rows)) / n
  out = {'seed': 'mean', 'base': mean('base'), 'self': mean('self'), 'control': mean('control'),
         'gain': {'mean': gain, 'low': gain - 1.96 * se, 'high': gain + 1.96 * se}}
  if all('ceiling' in r for r in rows):
    out['ceiling'] = mean('ceiling')
  return out


def table(rows: list[dict], level: str) -> str:
  head = ['seed', f'base {level}', f'self {level}', f'best control {level}',
          'control (lr, schedule, rounds)', f'verifier ceiling {level}',
          'self - control, paired (95% CI)', 'self - base', 'minutes']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  pct = lambda x: f'{100 * x:.1f}'
  for r in rows:
    g, arm = r['gain'], r.get('control_arm')
    lines.append('| ' + ' | '.join([
        str(r['seed']), pct(r['base']), pct(r['self']), pct(r['control']),
        f"{arm['learning_rate']:g}, {arm['schedule']}, {arm['rounds']}" if arm else '-',
        pct(r['ceiling']) if 'ceiling' in r else '-',
        f"{100 * g['mean']:+.1f} ({100 * g['low']:+.1f}, {100 * g['high']:+.1f})",
        f"{100 * (r['self'] - r['base']):+.1f}",
        f"{r['minutes']:.1f}" if 'minutes' in r else '-']) + ' |')
  return '\n'.join(lines)


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  rows = [run_seed(config, int(s), _WORKDIR.value, _CEILING.value) for s in _SEEDS.value]
  rows.append(pooled(rows))
  text = table(rows, report.level_key(config.task.max_digits))
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, 'seeds.md'), 'w') as f:
    f.write(text + '\n')
  with open(os.path.join(_WORKDIR.value, 'seeds.json'), 'w') as f:
    json.dump(rows, f, indent=1)
  print(text)


if __name__ == '__main__':
  app.run(main)

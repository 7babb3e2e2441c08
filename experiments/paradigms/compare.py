"""Each iterative paradigm against continued SFT at equal steps, from one base, on held-out problems.

  python -m experiments.paradigms.compare --paradigms=star,rest_em,spin,self_rewarding \
      --seeds=0,1 --workdir=/tmp/si_jax/paradigms

Per seed: a base model trains on a fixed labelled seed set (config.data.seed_set_size; the only
labels). From it, two arms with the same optimizer:
  control   continued SFT on the same seed set, for as many update steps as the paradigm may
            take in all its rounds (its nominal budget: the control never gets fewer), at each
            LR of --control_learning_rates (default: the paradigm's); the best on the held-out
            score itself is the control (tuned on the problems it is scored on: in its favour);
  paradigm  the paradigm's own loop (si_jax.main with config.init_from = the base).
Both are scored by greedy exact match on the same held-out problems ([seed, 1]); the gain is the
paired per-problem difference with its standard error. A paradigm "beats continued SFT" when the
gain exceeds 2 standard errors. tests/optimization/test_paradigms.py runs a smaller version of
the same code.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import time

import numpy as np
from absl import app, flags

from si_jax import experiment, main as si_main, models, sharding, tokenizers, train
from si_jax.evaluation import accuracy

# The configs/ module each paradigm runs.
CONFIGS = {'star': 'star', 'rest_em': 'rest_em', 'spin': 'spin',
           'self_rewarding': 'self_rewarding', 'rft': 'rejection_sampling'}


def paradigm_steps(config) -> int:
  """The paradigm's nominal update budget over all its rounds (the control's step count)."""
  gro = config.gro
  if config.job == 'rejection_sampling':
    return gro.num_rounds * gro.sft_steps
  if config.job == 'spin':
    return gro.num_rounds * gro.spin_steps
  if config.job == 'self_rewarding':
    return gro.judge_sft_steps + gro.num_rounds * gro.dpo_steps
  raise ValueError(f'no step budget known for config.job={config.job!r}')


def get_config(paradigm: str, seed: int, workdir: str):
  config = importlib.import_module(f'configs.{CONFIGS[paradigm]}').get_config()
  config.seed, config.workdir = seed, workdir
  return config


def _control_config(config, num_steps: int, workdir: str):
  """Continued SFT of the base on its seed set: the paradigm's optimizer, num_steps updates."""
  control = copy.deepcopy(config)
  with control.unlocked():
    control.job, control.workdir = 'sft', workdir  # init_from: the base, as the paradigm.
    control.train.num_steps = num_steps
    control.train.batch_size = config.gro.batch_size
    control.train.log_every = max(1, num_steps)
    control.checkpoint.every_steps = num_steps
  return control


def held_out(config, workdir: str) -> np.ndarray:
  """Per-problem greedy correctness (0/1) of workdir's latest params on the [seed, 1] problems."""
  exp_task = experiment.make_task(config)
  problems = exp_task.sample([config.seed, 1], config.train.eval_size)
  tokenizer = tokenizers.Tokenizer.load(workdir)
  model_cfg = models.TransformerConfig.from_config_dict(config.model)
  model, abstract_params = models.abstract_model(model_cfg)
  mesh = sharding.make_mesh(config.mesh)
  shardings = sharding.named_shardings(models.logical_axes(model_cfg), abstract_params, mesh)
  params = experiment.load_params(workdir, model_cfg, shardings)
  _, completions = accuracy.greedy_accuracy(model, params, tokenizer, exp_task, problems,
                                            config.gro.max_new_tokens)
  return np.asarray([exp_task.verify(p, c) for p, c in zip(problems, completions)])


def paired_gain(paradigm: np.ndarray, control: np.ndarray) -> tuple[float, float]:
  """Mean per-problem difference and its standard error."""
  d = paradigm.astype(np.float64) - control.astype(np.float64)
  return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def compare(config, control_learning_rates: tuple[float, ...] = ()) -> dict:
  """Base (trained here unless config.init_from), control and paradigm; their accuracies.

  The control is continued SFT at the best of control_learning_rates (default: the paradigm's
  own LR), picked on the held-out score."""
  start = time.time()
  root = config.workdir
  with config.unlocked():
    config.init_from = train.warm_start(config)  # <root>/base unless given.
  base = config.init_from
  steps = paradigm_steps(config)
  controls = {}
  for lr in control_learning_rates or (config.optimizer.learning_rate,):
    control = _control_config(config, steps, os.path.join(root, f'control_lr{lr:g}'))
    control.optimizer.learning_rate = lr
    train.run(control)
    controls[lr] = held_out(config, control.workdir)
  best_lr = max(controls, key=lambda lr: controls[lr].mean())
  with config.unlocked():
    config.workdir = os.path.join(root, 'paradigm')
  si_main.run(config)
  acc = {'base': held_out(config, base), 'control': controls[best_lr],
         'paradigm': held_out(config, config.workdir)}
  gain, se = paired_gain(acc['paradigm'], acc['control'])
  return {'base': float(acc['base'].mean()), 'control': float(acc['control'].mean()),
          'paradigm': float(acc['paradigm'].mean()), 'gain': gain, 'se': se,
          'control_steps': steps, 'control_lr': best_lr,
          'control_by_lr': {f'{lr:g}': float(a.mean()) for lr, a in controls.items()},
          'minutes': (time.time() - start) / 60,
          'per_problem': {name: a.tolist() for name, a in acc.items()}}


FLAGS = flags.FLAGS
flags.DEFINE_list('paradigms', list(CONFIGS)[:4], 'Paradigms to compare (keys of CONFIGS).')
flags.DEFINE_list('seeds', ['0', '1'], 'Seeds: each its own base, control and paradigm.')
flags.DEFINE_string('workdir', '/tmp/si_jax/paradigms', 'Runs go to <workdir>/<paradigm>/<seed>.')
flags.DEFINE_list('set', [], 'Config overrides, e.g. data.seed_set_size=128,train.num_steps=100.')
flags.DEFINE_list('control_learning_rates', [], 'Constant LRs of the continued-SFT control; the '
                  'best on the held-out score is the control (default: the paradigm\'s LR).')


def override(config, assignments: list[str]):
  """Applies `section.key=value` strings, each value parsed as the field's type."""
  for assignment in assignments:
    path, value = assignment.split('=', 1)
    *sections, key = path.split('.')
    target = config
    for section in sections:
      target = target[section]
    kind = type(target[key])
    target[key] = value if kind is str else (value == 'True' if kind is bool else kind(value))
  return config


def table(rows: list[dict]) -> str:
  """Markdown: accuracies (%) and the paired gain over continued SFT with its standard error."""
  out = ['| paradigm | seed | base | continued SFT (steps, LR) | paradigm | gain (SE) | > 2 SE | '
         'minutes |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    out.append(f"| {r['paradigm']} | {r['seed']} | {100 * r['base']:.1f} | "
               f"{100 * r['control']:.1f} ({r['control_steps']}, {r['control_lr']:g}) | "
               f"{100 * r['paradigm_acc']:.1f} | "
               f"{100 * r['gain']:+.1f} ({100 * r['se']:.1f}) | "
               f"{'yes' if r['gain'] > 2 * r['se'] else 'no'} | {r['minutes']:.1f} |")
  return '\n'.join(out)


def main(argv):
  del argv
  rows = []
  for name in FLAGS.paradigms:
    for seed in map(int, FLAGS.seeds):
      config = get_config(name, seed, os.path.join(FLAGS.workdir, name, str(seed)))
      result = compare(override(config, FLAGS.set),
                       tuple(map(float, FLAGS.control_learning_rates)))
      del result['per_problem']
      rows.append({**result, 'paradigm_acc': result['paradigm'], 'paradigm': name,
                   'seed': seed})
      print(json.dumps(rows[-1]))
  text = table(rows)
  print(text)
  with open(os.path.join(FLAGS.workdir, 'paradigms.md'), 'w') as f:
    f.write(text + '\n')


if __name__ == '__main__':
  app.run(main)

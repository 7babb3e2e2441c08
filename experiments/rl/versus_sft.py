"""GRPO, Dr. GRPO, DAPO, RLOO and ReST-EM against a tuned continued SFT at equal optimizer steps.

  python -m experiments.rl.versus_sft --seeds=0,1 --workdir=/tmp/si_jax/rl_vs_sft

The setting of the self-improvement papers: labels are a small fixed seed set, fresh problems
are free and a verifier scores answers. Per seed, a weak base (a tiny model, 60 SFT steps on a
256-problem seed set of string reversal) is trained on from the same start by
  * continued SFT: `steps` more SFT steps (batch 64) on the same seed set, at each LR of
    --sft_learning_rates; the control is the best of them on the held-out score (tuned on the
    very problems it is scored on: a bias in the control's favour);
  * each algorithm (configs/grpo_addition.py:<name>): `steps` optimizer steps of online RL on
    fresh problems with the verifier's reward (16 problems x 16 samples per rollout, or P for
    an arm named <name>:P; 2 epochs), at the RL phase's constant LR 1e-3;
  * rest_em:P (configs/rest_em.py): 2 rounds of P fresh problems x 8 samples, each M-step
    fine-tuning the *base* for steps / 2 SFT steps on the verified samples (so its final model
    has half the control's updates).
Score: the mean verified reward of 4 samples at T=1 on 256 held-out problems; `- sft` is the
paired per-problem difference from the tuned control, with its standard error. Writes
versus_sft.md / .json under --workdir.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import ml_collections
import numpy as np
from absl import app, flags

from configs import grpo_addition, rest_em
from experiments import report
from si_jax import experiment, sampling, train
from si_jax.optimization import online_rl, rejection_sampling, rounds

FLAGS = flags.FLAGS
SEED_SET = 256  # Labelled problems: the base's and the control's only data.


def reverse_config(workdir: str, algorithm: str = 'grpo', seed: int = 0, steps: int = 480,
                   seed_set: int = SEED_SET) -> ml_collections.ConfigDict:
  """configs/grpo_addition.py:<algorithm> moved to string reversal with a fixed seed set."""
  c = grpo_addition.get_config(algorithm)
  c.workdir, c.seed = workdir, seed
  c.task = ml_collections.ConfigDict({'name': 'reverse', 'letters': 'abcdefghij',
                                      'min_len': 1, 'max_len': 8})
  c.data.seq_len, c.rl.max_new_tokens = 20, 10
  c.data.seed_set_size = seed_set
  if c.rl.overlong_buffer:  # DAPO's L_cache: the last 20% of the budget, as its 4k of 20k.
    c.rl.overlong_buffer = c.rl.max_new_tokens // 5
  c.train.num_steps = 60  # weak: ~25% greedy exact match
  c.rl.prompts_per_iteration, c.rl.group_size, c.rl.epochs = 16, 16, 2
  c.rl.num_iterations = c.rl.eval_every = c.rl.checkpoint_every = steps // c.rl.epochs
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1  # Pure data parallel: fastest on CPU.
  return c


def held_out_rewards(exp, params, config) -> np.ndarray:
  """Per held-out problem, the mean verified reward of eval_samples samples at T=1: [P]."""
  problems = exp.task.sample([config.seed, 1], config.train.eval_size)
  texts, _ = sampling.Sampler(exp.model, exp.mesh).generate(
      params, exp.tokenizer, [p.prompt for p in problems],
      max_new_tokens=config.rl.max_new_tokens, strategy=sampling.Temperature(1.0),
      n=config.rl.eval_samples, seed=config.seed)
  return np.asarray([np.mean([exp.task.verify(p, c) for c in group])
                     for p, group in zip(problems, texts)])


def _scored(config) -> np.ndarray:
  exp, state = experiment.setup(config, 1)  # Resumes the run's last checkpoint (or the base).
  try:
    return held_out_rewards(exp, state.params, config)
  finally:
    exp.ckpt.close()


def run_rewards(config, run_dir: str) -> np.ndarray:
  """Held-out rewards of the latest params in run_dir (a base, or a finished arm), scored as
  config's arms are."""
  config = config.copy_and_resolve_references()
  config.init_from, config.workdir = run_dir, os.path.join(config.workdir, 'score')
  return _scored(config)


def continued_sft(config, base_dir: str, steps: int) -> np.ndarray:
  """The control: `steps` more SFT steps on the seed set, from the base, at the config's LR;
  held-out rewards."""
  config = config.copy_and_resolve_references()
  config.init_from = base_dir
  exp, state = experiment.setup(config, steps)
  try:
    seeds = experiment.seed_split(config, exp.task)[0]
    state, _ = rounds.train_sft(exp, rounds.sft_step(exp), state, [p.prompt for p in seeds],
                                [p.answer for p in seeds], num_steps=steps,
                                batch_size=config.train.batch_size, seed=config.seed,
                                max_epochs=1e9)
    return held_out_rewards(exp, state.params, config)
  finally:
    exp.ckpt.close()


def tuned_continued_sft(config, base_dir: str, steps: int,
                        learning_rates: list[str]) -> tuple[str, dict[str, np.ndarray]]:
  """Continued SFT at each constant LR (each under <workdir>/sft_lr<lr>): (the best arm's name,
  {'sft lr=<lr>': held-out rewards}). The best is picked on the held-out score itself."""
  scores = {}
  for lr in learning_rates:
    sft_config = config.copy_and_resolve_references()
    sft_config.workdir = os.path.join(config.workdir, f'sft_lr{lr}')
    sft_config.optimizer.learning_rate = float(lr)
    scores[f'sft lr={lr}'] = continued_sft(sft_config, base_dir, steps)
  return max(scores, key=lambda k: scores[k].mean()), scores


def rest_em_config(config, problems_per_round: int, group_size: int = 8,
                   num_rounds: int = 2) -> ml_collections.ConfigDict:
  """configs/rest_em.py in the setting of `config` (a reverse_config): its task, seed set, seed,
  mesh and workdir, and its optimizer steps split over num_rounds M-steps from the base."""
  c = rest_em.get_config()
  c.workdir, c.seed, c.task, c.mesh = config.workdir, config.seed, config.task, config.mesh
  c.data.seq_len, c.data.seed_set_size = config.data.seq_len, config.data.seed_set_size
  c.gro.num_rounds, c.gro.problems_per_round, c.gro.group_size = (num_rounds, problems_per_round,
                                                                   group_size)
  c.gro.sft_steps = config.rl.num_iterations * config.rl.epochs // num_rounds
  c.gro.max_new_tokens = config.rl.max_new_tokens
  return c


def arm_rewards(arm: str, config: Callable[[str, str], ml_collections.ConfigDict],
                base_dir: str) -> np.ndarray:
  """Trains arm_config(arm, config) from base_dir; the held-out rewards of its final params,
  scored as every arm is (ReST-EM's run holds no RL eval settings: its reverse_config does)."""
  c = arm_config(arm, config)
  c.init_from = base_dir
  if c.job == 'rejection_sampling':
    rejection_sampling.run(c)
    return run_rewards(config('grpo', _dir_name(arm)), c.workdir)
  online_rl.run(c)
  return _scored(c)


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
  """(mean of a - b, its standard error) over problems."""
  d = np.asarray(a) - np.asarray(b)
  return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def _dir_name(arm: str) -> str:
  return arm.replace(':', '_x').replace('+', '_')


def arm_config(arm: str, config: Callable[[str, str], ml_collections.ConfigDict]):
  """The config of an arm named `<algorithm>[+ds][:<P>[x<G>]]`: +ds turns on DAPO's dynamic
  sampling, P problems x G samples a rollout (e.g. 'grpo', 'grpo:64', 'rloo+ds:16x8'); or
  `rest_em:<P>[x<G>]`, P fresh problems x G samples a round (e.g. 'rest_em:4096').
  config(algorithm, workdir name) builds the algorithm's config."""
  spec, _, shape = arm.partition(':')
  algorithm, plus, extra = spec.partition('+')
  prompts, _, group = shape.partition('x')
  name = _dir_name(arm)
  if algorithm == 'rest_em' and prompts and not plus:
    return rest_em_config(config('grpo', name), int(prompts), int(group or 8))
  if plus and extra != 'ds' or algorithm == 'rest_em':
    raise ValueError(f'--algorithms: {arm!r} is not <algorithm>[+ds][:<P>[x<G>]] or '
                     f'rest_em:<P>[x<G>]')
  c = config(algorithm, name)
  c.rl.dynamic_sampling = c.rl.dynamic_sampling or bool(plus)
  if prompts:
    c.rl.prompts_per_iteration = int(prompts)
  if group:
    c.rl.group_size = int(group)
  return c


def main(argv):
  del argv
  rows = []
  for seed in map(int, FLAGS.seeds):
    root = os.path.join(FLAGS.workdir, f'seed{seed}')
    config = lambda name, sub: reverse_config(os.path.join(root, sub), name, seed, FLAGS.steps,
                                              FLAGS.seed_set)
    base_dir = train.warm_start(config('grpo', 'base_run'))
    control, sft_scores = tuned_continued_sft(config('grpo', 'control'), base_dir, FLAGS.steps,
                                              FLAGS.sft_learning_rates)
    scores = {'base': run_rewards(config('grpo', 'base_run'), base_dir), **sft_scores}
    for arm in FLAGS.algorithms:
      scores[arm] = arm_rewards(arm, config, base_dir)
    for name, values in scores.items():
      diff, se = paired(values, scores[control])
      rows.append({'seed': seed, 'arm': name, 'control': name == control,
                   'reward': float(values.mean()), 'minus_sft': diff, 'se': se})
      print(rows[-1])
  lines = ['| seed | arm | held-out reward | - tuned sft (± SE) | > 2 SE |',
           '|---|---|---|---|---|']
  for r in rows:
    arm = f"{r['arm']} (control)" if r['control'] else r['arm']
    lines.append(f"| {r['seed']} | {arm} | {r['reward']:.3f} | {r['minus_sft']:+.3f} ± "
                 f"{r['se']:.3f} | {'yes' if r['minus_sft'] > 2 * r['se'] else 'no'} |")
  report.write(FLAGS.workdir, 'versus_sft', '\n'.join(lines) + '\n', rows)


def define_flags():
  """Defined when run as a script only: importing the module (tests do) defines no flag."""
  flags.DEFINE_list('seeds', ['0', '1'], 'Seeds (each its own base, control and runs).')
  flags.DEFINE_list('algorithms', ['grpo', 'dr_grpo', 'dapo', 'rloo', 'grpo:64'],
                    'Arms: <name>[+ds][:<P>[x<G>]], name in grpo.ALGORITHMS; +ds adds DAPO\'s '
                    'dynamic sampling, P problems x G samples a rollout (default 16 x 16); or '
                    'rest_em:<P>[x<G>], P fresh problems x G samples (default 8) a round.')
  flags.DEFINE_integer('seed_set', SEED_SET, 'Labelled problems of the seed set.')
  flags.DEFINE_integer('steps', 480, 'Optimizer steps of every arm after the base.')
  flags.DEFINE_list('sft_learning_rates', ['3e-4', '1e-3', '3e-3'],
                    'Constant LRs of continued SFT; the best on the held-out score is the control.')
  flags.DEFINE_string('workdir', '/tmp/si_jax/rl_vs_sft', 'Runs and the report go here.')


if __name__ == '__main__':
  define_flags()
  app.run(main)

"""TTRL (Zuo et al. 2025) on unlabeled test problems, against its labelled upper bound, 3 seeds.

  python -m experiments.refinement.ttrl_seeds --seeds=0,1,2 --workdir=/tmp/si_jax/ttrl

Per seed: a weak tiny model (100 SFT steps on labelled string reversal of 1-6 letters, ~50%
greedy accuracy) and 64 five-letter test problems (the frontier where its samples disagree).
From that model:
  * TTRL: GRPO on the test problems, reward = agreement with the majority of `vote` samples,
    the update trained on `group` of them (the paper votes over 64, trains on 32); no label read;
  * RL with labels: the same GRPO update with the verifier on the test labels, the upper bound
    the paper compares TTRL with.
Scores (labels used only here), as in the paper: avg@16 (mean accuracy of 16 samples at T=1)
and maj@16 (accuracy of their majority answer). Writes ttrl_seeds.md / .json under --workdir.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import app, flags

from configs import grpo_addition
from experiments import report
from si_jax import experiment, sampling
from si_jax.optimization import rounds
from si_jax.refinement import adaptation

FLAGS = flags.FLAGS
BASE_STEPS = 100
K = 16


def _config(workdir: str, seed: int, learning_rate: float, schedule: str):
  c = grpo_addition.get_config()
  c.workdir, c.seed = workdir, seed
  c.task = ml_collections.ConfigDict({'name': 'reverse', 'letters': 'abcdefghij',
                                      'min_len': 1, 'max_len': 6})
  c.data.seq_len = 20
  c.tokenizer_extra_chars = '|ok?n'  # As tests/refinement/test_refinement_methods.py's weak model.
  c.mesh.data, c.mesh.fsdp = -1, 1
  c.optimizer.learning_rate, c.optimizer.schedule, c.optimizer.warmup_steps = (
      learning_rate, schedule, 10)
  return c


def run_seed(seed: int, root: str) -> list[dict]:
  base, state = experiment.setup(_config(os.path.join(root, 'base'), seed, 1e-2, 'cosine'),
                                 BASE_STEPS)
  problems = base.task.sample([seed, 0], BASE_STEPS * 64)
  state, _ = rounds.train_sft(base, rounds.sft_step(base), state, [p.prompt for p in problems],
                              [p.answer for p in problems], num_steps=BASE_STEPS, batch_size=64,
                              seed=seed, max_epochs=1)
  base.ckpt.close()
  tt, tt_state = experiment.setup(_config(os.path.join(root, 'tt'), seed, 3e-4, 'constant'), 1)
  tt.tokenizer = base.tokenizer
  initial = rounds.frozen_copy(tt_state.replace(params=state.params))
  sampler = sampling.Sampler(tt.model, tt.mesh)
  test = tt.task.generate(seed=1000 + seed, n=64, difficulty=5)
  score = lambda params: adaptation.accuracy_at_k(tt, sampler, params, test, K, temperature=1.0,
                                                  max_new_tokens=10, seed=seed + 77)
  rows = [{'seed': seed, 'arm': 'base', **score(initial.params)}]
  for arm, reward in (('ttrl', 'majority'), ('rl with labels', 'verifiable')):
    cfg = adaptation.TTRLConfig(num_iterations=FLAGS.iterations, prompts_per_iteration=16,
                               group_size=FLAGS.group, vote_size=FLAGS.vote, reward=reward)
    out = adaptation.ttrl(tt, rounds.frozen_copy(initial), test, cfg, answer_n=K, seed=seed,
                          sampler=sampler)
    rows.append({'seed': seed, 'arm': arm, **score(out.state.params),
                 'majority_share_first': out.history[0]['majority_share'],
                 'majority_share_last': out.history[-1]['majority_share']})
  tt.ckpt.close()
  return rows


def main(argv):
  del argv
  rows = []
  for seed in map(int, FLAGS.seeds):
    rows += run_seed(seed, os.path.join(FLAGS.workdir, f'seed{seed}'))
    print(rows[-3:])
  lines = [f'| arm | avg@{K} | maj@{K} | per seed avg@{K} | per seed maj@{K} |',
           '|---|---|---|---|---|']
  for arm in dict.fromkeys(r['arm'] for r in rows):
    avg = [r[f'avg@{K}'] for r in rows if r['arm'] == arm]
    maj = [r[f'maj@{K}'] for r in rows if r['arm'] == arm]
    se = lambda v: np.std(v, ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
    lines.append(f'| {arm} | {np.mean(avg):.3f} ± {se(avg):.3f} | {np.mean(maj):.3f} ± '
                 f'{se(maj):.3f} | {" ".join(f"{v:.3f}" for v in avg)} | '
                 f'{" ".join(f"{v:.3f}" for v in maj)} |')
  report.write(FLAGS.workdir, 'ttrl_seeds', '\n'.join(lines) + '\n', rows)


def define_flags():
  """Defined when run as a script only: importing the module (tests do) defines no flag."""
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (each its own base model and test set).')
  flags.DEFINE_integer('iterations', 30, 'GRPO iterations of each arm.')
  flags.DEFINE_integer('vote', 16, 'Samples per problem behind the vote.')
  flags.DEFINE_integer('group', 8, 'Samples per problem the update trains on.')
  flags.DEFINE_string('workdir', '/tmp/si_jax/ttrl', 'Runs and the report go here.')


if __name__ == '__main__':
  define_flags()
  app.run(main)

"""Accuracy vs samples: what does drawing more samples per problem buy, and which selector spends
it best?

  python -m experiments.refinement.accuracy_vs_samples   # ~1.5 min on 2 CPU cores

A tiny model is trained briefly with labels (SFT on answering mixed with judging, to give it a
self-judge; judge negatives are near misses: one letter changed, two swapped,
or one dropped). Each held-out problem then gets 16 samples at temperature 1, and for n in
1, 2, 4, 8, 16 the 16 samples are split into 16 / n disjoint sets of n, over which we average:
  maj@n           self-consistency vote on the extracted answers (label-free);
  bo-n logprob    best-of-n by the model's mean token log-prob (label-free);
  bo-n self-judge best-of-n by the model's verdict p(y) / (p(y) + p(n)) (label-free);
  bo-n verifier   best-of-n by the task's verifier: pass@n, the ceiling of any selector (oracle).
pass@1 (unbiased, from all 16 samples) and greedy accuracy come with the table. Cost columns:
samples and generated tokens per problem; the self-judge adds one forward pass per sample.
A second table runs the search / refinement methods (si_jax/refinement) on the same problems.
Outputs: accuracy_vs_samples.md, .json and .png under --workdir.

At the default 150 steps the self-judge has not learnt to judge yet (its verdicts sit near 0.48
whatever the answer; at ~800 steps it separates right from near-miss answers, but by then the
model no longer errs): its best-of-n column shows what an uninformative judge costs.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from configs import base as base_config
from si_jax import experiment, sampling
from si_jax.evaluation import accuracy, metrics
from si_jax.optimization import judge, rounds
from si_jax.refinement import self_refine, tree_search, voting

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/si_jax/accuracy_vs_samples', 'Outputs go here.')
_STEPS = flags.DEFINE_integer('train_steps', 150, 'SFT steps of the brief labelled training.')
_EVAL = flags.DEFINE_integer('eval_size', 256, 'Held-out problems.')
_NS = flags.DEFINE_list('ns', ['1', '2', '4', '8', '16'], 'Sample counts (each divides the max).')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Sampling temperature.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seeds the model, the data and the samples.')
_SEARCH = flags.DEFINE_bool('search', True, 'Also run the search / refinement table.')

YES, NO = 'y', 'n'
MAX_NEW = 10


def get_config(workdir: str, seed: int) -> ml_collections.ConfigDict:
  """Reversal of 1-8 letters, the ~100k-parameter model, a short cosine SFT run."""
  c = base_config.get_config()
  c.workdir, c.seed = workdir, seed
  c.task = ml_collections.ConfigDict({'name': 'reverse', 'letters': 'abcdefghij',
                                      'min_len': 1, 'max_len': 8})
  c.data = ml_collections.ConfigDict({'seq_len': 32})  # bos + judge prompt + verdict + eos.
  # The judge's template and verdicts, and the refinement templates (a subset of those).
  c.tokenizer_extra_chars = judge.judge_alphabet() + YES + NO + self_refine.template_alphabet(
      self_refine.REVISE_TEMPLATE, self_refine.MEMORY_TEMPLATE)
  base_config.use_tiny_model(c)
  c.optimizer.learning_rate, c.optimizer.warmup_steps = 1e-2, 15
  c.mesh.data, c.mesh.fsdp = 1, -1
  c.checkpoint.async_save = False
  return c


# --- Brief labelled training: answering + judging ------------------------------------------------


def near_miss(answer: str, letters: str, rng: np.random.Generator) -> str:
  """A wrong answer close to the right one, like the model's own mistakes."""
  for _ in range(10):
    s, kind = list(answer), rng.integers(3)
    i = int(rng.integers(len(s)))
    if kind == 0:
      s[i] = letters[int(rng.integers(len(letters)))]
    elif kind == 1 and len(s) > 1:
      j = int(rng.integers(len(s)))
      s[i], s[j] = s[j], s[i]
    elif len(s) > 1:
      del s[i]
    if ''.join(s) != answer:
      return ''.join(s)
  return answer + letters[0]


def train(exp, state):
  """`train_steps` SFT steps of `state`, each batch half answering, half judging (a correct
  answer or a near miss, 50 / 50): the trained state."""
  steps, rng = _STEPS.value, np.random.default_rng([exp.config.seed, 1])
  problems = exp.task.sample([exp.config.seed, 2], steps * 64)
  prompts, targets = [], []
  for k, p in enumerate(problems):
    if k % 2 == 0:
      prompts.append(p.prompt)
      targets.append(p.answer)
    else:
      good = rng.random() < 0.5
      candidate = p.answer if good else near_miss(p.answer, exp.config.task.letters, rng)
      prompts.append(judge.JUDGE_TEMPLATE.format(prompt=p.prompt, completion=candidate))
      targets.append(YES if good else NO)
  return rounds.train_sft(exp, rounds.sft_step(exp), state, prompts, targets, num_steps=steps,
                          batch_size=64, seed=exp.config.seed, max_epochs=1)[0]


# --- Selection over n samples --------------------------------------------------------------------


def sample_table(exp, params, sampler, problems) -> tuple[list[dict], dict]:
  """Rows per n of accuracy and cost, from one draw of max(ns) samples per problem."""
  task, tok = exp.task, exp.tokenizer
  ns = [int(n) for n in _NS.value]
  big = max(ns)
  texts, out = sampler.generate(params, tok, [p.prompt for p in problems], max_new_tokens=MAX_NEW,
                                strategy=sampling.Temperature(_TEMPERATURE.value), n=big,
                                seed=exp.config.seed)
  lengths_PxN = np.asarray(out.lengths).reshape(len(problems), big)
  mean_logp_PxN = (np.asarray(out.logprobs).sum(-1).reshape(len(problems), big) /
                   np.maximum(lengths_PxN, 1))
  flat = [t for group in texts for t in group]
  flat_prompts = [p.prompt for p in problems for _ in range(big)]
  judge_PxN = np.concatenate([  # In chunks: one forward each.
      judge.verdict_scores(exp.model, params, tok, flat_prompts[i:i + 1024], flat[i:i + 1024],
                           yes=YES, no=NO) for i in range(0, len(flat), 1024)])
  judge_PxN = judge_PxN.reshape(len(problems), big)
  correct_PxN = np.asarray([[task.verify(p, c) for c in group] for p, group in
                            zip(problems, texts)]) >= 1.0
  greedy, _ = accuracy.greedy_accuracy(exp.model, params, tok, task, problems, MAX_NEW)
  head = {'pass@1': float(np.mean(metrics.pass_at_k(big, correct_PxN.sum(1), 1))),
          'greedy': greedy, 'judge': judge.agreement(judge_PxN, correct_PxN)}
  rows = []
  for n in ns:
    acc = {'maj': [], 'logprob': [], 'self-judge': [], 'verifier': []}
    for s in range(0, big, n):
      part = slice(s, s + n)
      group = [g[part] for g in texts]
      answers, _ = voting.self_consistency(task, group)
      acc['maj'].append(np.mean([a == p.answer for a, p in zip(answers, problems)]))
      for name, scores in (('logprob', mean_logp_PxN), ('self-judge', judge_PxN),
                           ('verifier', correct_PxN.astype(np.float64))):
        chosen = voting.best_of_n(group, scores[:, part])
        acc[name].append(np.mean([task.verify(p, c) >= 1.0 for p, c in zip(problems, chosen)]))
    rows.append({'n': n, **{k: float(np.mean(v)) for k, v in acc.items()},
                 'samples': n, 'tokens': float(lengths_PxN[:, :n].sum(1).mean())})
  return rows, head


# --- Search and refinement -----------------------------------------------------------------------


def search_table(exp, params, sampler, problems) -> list[dict]:
  """Each method once on the same problems: accuracy and cost per problem."""
  tok, task = exp.tokenizer, exp.task
  self_judge = judge.judge_reward(exp.model, params, tok, yes=YES, no=NO)
  hot = sampling.Temperature(_TEMPERATURE.value)
  common = dict(max_new_tokens=MAX_NEW, seed=exp.config.seed)
  runs = {
      'self-refine, self-judge critic (label-free)': lambda: self_refine.self_refine(
          sampler, params, tok, task, problems, critic=self_judge, max_rounds=4, strategy=hot,
          **common),
      'self-refine, verifier': lambda: self_refine.self_refine(
          sampler, params, tok, task, problems, verifier=task.verify, max_rounds=4,
          strategy=hot, **common),
      'reflexion, verifier': lambda: self_refine.reflexion(
          sampler, params, tok, task, problems, verifier=task.verify, max_trials=4,
          strategy=hot, **common),
      'beam 4x4, 2-token steps, logprob (label-free)': lambda: tree_search.beam_search(
          sampler, params, tok, task, problems, beam_width=4, expand=4, step_tokens=2,
          strategy=hot, **common),
      'beam 4x4, 2-token steps, verifier': lambda: tree_search.beam_search(
          sampler, params, tok, task, problems, beam_width=4, expand=4, step_tokens=2,
          verifier=task.verify, strategy=hot, **common),
      'best-first x4, <= 8 expansions, verifier': lambda: tree_search.best_first_search(
          sampler, params, tok, task, problems, expand=4, max_expansions=8, step_tokens=2,
          verifier=task.verify, strategy=hot, **common),
  }
  rows = []
  for name, fn in runs.items():
    t = time.time()
    result = fn()
    acc = np.mean([a == p.answer for a, p in zip(result.answers, problems)])
    rows.append({'method': name, 'accuracy': float(acc), 'samples': result.samples / len(problems),
                 'tokens': result.generated_tokens / len(problems),
                 'seconds': round(time.time() - t, 1)})
    logging.info('%s', rows[-1])
  return rows


# --- Report --------------------------------------------------------------------------------------


def markdown(rows, head, search_rows, num_problems: int) -> str:
  pct = lambda x: f'{100 * x:.1f}'
  j = head['judge']
  lines = [f'Held-out reversal problems: {num_problems}; samples at temperature '
           f'{_TEMPERATURE.value}; pass@1 (unbiased, 16 samples) {pct(head["pass@1"])}%, greedy '
           f'{pct(head["greedy"])}%. Self-judge vs verifier on the samples: accuracy '
           f'{pct(j["accuracy"])}%, precision {pct(j["precision"])}%, recall {pct(j["recall"])}%.',
           '', 'Accuracy (%) over disjoint sets of n samples per problem:', '',
           '| n | samples / problem | tokens / problem | maj@n | bo-n logprob | bo-n self-judge '
           '| bo-n verifier (pass@n) |', '| --- | --- | --- | --- | --- | --- | --- |']
  for r in rows:
    lines.append(f"| {r['n']} | {r['samples']} | {r['tokens']:.1f} | {pct(r['maj'])} | "
                 f"{pct(r['logprob'])} | {pct(r['self-judge'])} | {pct(r['verifier'])} |")
  if search_rows:
    lines += ['', 'Search and refinement (one run each; a verifier, when used, is an oracle at '
              'test time):', '', '| method | accuracy (%) | samples / problem | '
              'tokens / problem | seconds |', '| --- | --- | --- | --- | --- |']
    for r in search_rows:
      lines.append(f"| {r['method']} | {pct(r['accuracy'])} | {r['samples']:.1f} | "
                   f"{r['tokens']:.1f} | {r['seconds']} |")
  return '\n'.join(lines) + '\n'


def plot(rows, head, path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  ns = [r['n'] for r in rows]
  for key, label in (('verifier', 'best-of-n verifier (pass@n)'), ('maj', 'maj@n'),
                     ('self-judge', 'best-of-n self-judge'), ('logprob', 'best-of-n logprob')):
    ax.plot(ns, [100 * r[key] for r in rows], marker='o', label=label)
  ax.axhline(100 * head['greedy'], color='gray', ls='--', label='greedy')
  ax.set_xscale('log', base=2)
  ax.set_xticks(ns, [str(n) for n in ns])
  ax.set_xlabel('samples per problem (n)')
  ax.set_ylabel('accuracy (%)')
  ax.set_title('Reversal: accuracy vs samples')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(_):
  logging.set_verbosity(logging.WARNING)
  start = time.time()
  workdir = _WORKDIR.value
  config = get_config(os.path.join(workdir, 'model'), _SEED.value)
  exp, state = experiment.setup(config, _STEPS.value)
  try:
    params = train(exp, state).params
    print(f'trained {_STEPS.value} steps in {time.time() - start:.0f}s on {jax.devices()[0]}')
    sampler = sampling.Sampler(exp.model, exp.mesh)
    problems = exp.task.sample([_SEED.value, 3], _EVAL.value)
    rows, head = sample_table(exp, params, sampler, problems)
    search_rows = search_table(exp, params, sampler, problems) if _SEARCH.value else []
  finally:
    exp.ckpt.close()
  report = markdown(rows, head, search_rows, len(problems))
  report += f'\nWall time: {time.time() - start:.0f}s.\n'
  print(report)
  with open(os.path.join(workdir, 'accuracy_vs_samples.md'), 'w') as f:
    f.write(report)
  with open(os.path.join(workdir, 'accuracy_vs_samples.json'), 'w') as f:
    json.dump({'rows': rows, 'head': head, 'search': search_rows}, f, indent=1)
  plot(rows, head, os.path.join(workdir, 'accuracy_vs_samples.png'))
  print(f'wrote {workdir}/accuracy_vs_samples.{{md,json,png}}')


if __name__ == '__main__':
  app.run(main)

"""Data selection at equal example budgets: which self-labelled examples should a model learn from?

  python -m experiments.selection.compare --workdir=/tmp/si_jax/selection   # ~6 min, 2 CPU cores

Per seed: a weak base model (120 SFT steps on reversing 1-6 letter strings, the only labels of
the run; 40-80% greedy accuracy by seed, as it sits just before the step where this model learns
the rule, and 0-35% at length 6) samples k answers for each of `pool_size` fresh
problems; each problem's majority answer becomes its pseudo-label. Majority, not the verifier:
with verified labels every candidate is correct and selection only chooses problems; with
self-labels it must also avoid wrong labels, the case label-free self-improvement faces
(configs/rejection_sampling.py with gro.reward='majority'). Verified correctness is recorded for
the report only, except in the two reference rows marked below. Each method picks `budget`
examples; a copy of the base (fresh optimizer) takes `sft_steps` SFT steps on them; held-out
greedy accuracy is measured over all levels and at the hardest one.
  random              uniform draw;
  agreement           largest majority share (self-consistency confidence);
  agreement_per_level the same within each prompt length (the level, visible without labels),
                      equal counts per level: confidence without the drift to easy problems;
  uncertainty         largest p(1-p), p = majority share (the verified p is not available);
  ifd                 largest IFD among IFD < 1 (Li et al. 2024: hard, instruction-following);
  perplexity          lowest perplexity of the pseudo-label (keep what the model is sure of);
  adaptive            a Plackett-Luce selector over the agreement, uncertainty, IFD, perplexity
                      and length features, trained by REINFORCE for `probe_rounds` rounds on a
                      scratch copy, each pick rewarded with its own loss drop (prediction gain,
                      Graves et al. 2017); then the top `budget` by its learned score. The
                      probe's SFT steps are extra cost, shown in the table;
  oracle (uses labels) uniform among verified-correct pseudo-labels: a perfect noise filter;
  gold (uses labels)  uniform problems with their reference answers: what the budget can buy.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
from absl import app, flags, logging

from configs import rejection_sampling
from si_jax import experiment, sampling, train
from si_jax.evaluation import accuracy
from si_jax.optimization import rewards, rollout, rounds
from si_jax.selection import adaptive, scores, selectors

_WORKDIR = flags.DEFINE_string('workdir', '/tmp/si_jax/selection', 'Outputs go here.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds (base model, pool, draws).')
_METHODS = flags.DEFINE_list(
    'methods', ['random', 'agreement', 'agreement_per_level', 'uncertainty', 'ifd', 'perplexity',
                'adaptive', 'oracle', 'gold'], 'Selection methods to compare.')
_POOL = flags.DEFINE_integer('pool_size', 2048, 'Fresh problems in the candidate pool.')
_GROUP = flags.DEFINE_integer('group_size', 8, 'Sampled answers per problem (k).')
_BUDGET = flags.DEFINE_integer('budget', 512, 'Examples every method selects.')
_STEPS = flags.DEFINE_integer('sft_steps', 96, 'SFT steps on the selected examples (batch 64).')
_PROBE_ROUNDS = flags.DEFINE_integer('probe_rounds', 4, 'Adaptive selector: REINFORCE rounds.')
_PROBE_SIZE = flags.DEFINE_integer('probe_size', 128, 'Adaptive selector: picks per round.')
_PROBE_STEPS = flags.DEFINE_integer('probe_steps', 8, 'Adaptive selector: SFT steps per round.')
_PROGRESS = flags.DEFINE_enum(
    'adaptive_progress', 'loss_drop', ['loss_drop', 'relative'],
    "Adaptive selector's reward per pick: its NLL drop, or that drop over its NLL before.")
_BASE_STEPS = flags.DEFINE_integer('base_steps', 120, 'SFT steps of the labelled base phase.')
_LR = flags.DEFINE_float('learning_rate', 1e-3, 'Fine-tune learning rate.')
_EVAL = flags.DEFINE_integer('eval_size', 512, 'Held-out problems, all levels.')
_EVAL_HARD = flags.DEFINE_integer('eval_hard_size', 256, 'Held-out problems at the hardest level.')

FEATURES = ('agreement', 'uncertainty', 'ifd', 'perplexity', 'length')


def get_config(workdir: str, seed: int):
  """configs/rejection_sampling.py (reversal, tiny model) with a shorter task, a longer base phase
  and this run's paths."""
  c = rejection_sampling.get_config()
  c.workdir = workdir
  c.seed = seed
  c.task.max_len = 6  # Lengths 1-6: after the base phase the tiny model's frontier is at 4-6.
  c.train.num_steps = _BASE_STEPS.value  # Base phase (cosine LR 1e-2).
  c.data.seq_len = 24  # bos + 9-char prompt + up to 10 sampled chars + eos = 21 tokens.
  c.gro.batch_size = 64  # Sequences per SFT step.
  c.optimizer.learning_rate = _LR.value  # Constant after warmup (fine-tunes and the probe).
  c.optimizer.warmup_steps = 4  # Short fine-tunes: reach the peak LR early.
  return c


# --- Candidate pool ------------------------------------------------------------------------------


def build_pool(exp, params, seed: int) -> list[dict]:
  """One example per problem: (prompt, majority answer), with its group statistics."""
  gro = exp.config.gro
  problems = exp.task.sample([seed, 3], _POOL.value)
  ro = rollout.rollout(sampling.Sampler(exp.model, exp.mesh), params, exp.tokenizer,
                       problems, group_size=_GROUP.value, max_new_tokens=gro.max_new_tokens,
                       strategy=sampling.Temperature(gro.temperature), seed=seed * 7919)
  labels, shares = rewards.majority_labels(exp.task, ro.completions, _GROUP.value)
  return [{'prompt': p.prompt, 'completion': label, 'share': float(share),
           'successes': float(share) * _GROUP.value, 'attempts': _GROUP.value,
           'difficulty': p.difficulty, 'answer': p.answer, 'correct': float(label == p.answer)}
          for p, label, share in zip(problems, labels, shares) if label is not None]


def features(exp, params, pool: list[dict]) -> dict[str, np.ndarray]:
  """The label-free scores every method reads, one value per pool example."""
  kw = dict(model=exp.model, params=params, tokenizer=exp.tokenizer, batch_size=256)
  return {'agreement': np.asarray([ex['share'] for ex in pool]),
          'uncertainty': scores.compute('uncertainty', pool),
          'ifd': scores.compute('ifd', pool, **kw),
          'perplexity': scores.compute('perplexity', pool, **kw),
          'length': np.asarray([len(ex['prompt']) - 1 for ex in pool], np.float64)}


def feature_matrix(feats: dict[str, np.ndarray]) -> np.ndarray:
  return np.stack([feats[name] for name in FEATURES], axis=1)


# --- Methods -------------------------------------------------------------------------------------


def select_static(method: str, feats, pool, budget: int, seed: int) -> np.ndarray:
  """Indices of the `budget` examples a fixed rule keeps."""
  rng = np.random.default_rng([seed, 5])
  if method in ('random', 'gold'):  # The same draw: gold = random with true labels.
    return rng.choice(len(pool), budget, replace=False)
  if method == 'oracle':
    correct = np.flatnonzero([ex['correct'] for ex in pool])
    return rng.choice(correct, min(budget, len(correct)), replace=False)
  if method == 'agreement_per_level':  # Prompt length is the level: visible without labels.
    levels = np.unique(feats['length'])
    counts = budget // len(levels) + (np.arange(len(levels)) < budget % len(levels))
    members = [np.flatnonzero(feats['length'] == v) for v in levels]
    return np.concatenate([m[selectors.top_k(feats['agreement'][m], c)]
                           for m, c in zip(members, counts)])
  if method in ('agreement', 'uncertainty'):
    return selectors.top_k(feats[method], budget)
  if method == 'ifd':
    return selectors.top_ifd(feats['ifd'], budget)
  if method == 'perplexity':
    return selectors.top_k(feats['perplexity'], budget, largest=False)
  raise ValueError(f'unknown method {method!r}')


def mean_nll(exp, params, examples) -> np.ndarray:
  return np.log(scores.compute('perplexity', examples, model=exp.model, params=params,
                               tokenizer=exp.tokenizer, batch_size=256))


def select_adaptive(exp, step_fn, base_state, pool, feats, budget: int, seed: int):
  """REINFORCE probe rounds on a scratch copy of the base, then the top `budget` by the learned
  score. Progress of a pick = its NLL drop over the round (or, with --adaptive_progress=relative,
  the fraction of its NLL that dropped), z-scored within the round so that the learning rate does
  not depend on the loss scale."""
  selector = adaptive.SelectorState.init(FEATURES, learning_rate=0.5)
  x_NxF = feature_matrix(feats)
  remaining = np.arange(len(pool))
  scratch = rounds.frozen_copy(base_state)
  for r in range(_PROBE_ROUNDS.value):
    local = adaptive.select(selector, x_NxF[remaining], _PROBE_SIZE.value, seed=seed * 100 + r)
    picked = [pool[i] for i in remaining[local]]
    before = mean_nll(exp, scratch.params, picked)
    scratch, _ = rounds.train_sft(
        exp, step_fn, scratch, [ex['prompt'] for ex in picked],
        [ex['completion'] for ex in picked], num_steps=_PROBE_STEPS.value,
        batch_size=exp.config.gro.batch_size, seed=seed * 100 + r, max_epochs=64)
    gain = before - mean_nll(exp, scratch.params, picked)
    if _PROGRESS.value == 'relative':
      gain = gain / np.maximum(before, 1e-6)
    selector = adaptive.update(selector, x_NxF[remaining], local, selectors.standardize(gain))
    remaining = np.delete(remaining, local)
  chosen = selectors.top_k(adaptive.logits(selector, x_NxF), budget)
  return chosen, dict(zip(FEATURES, np.round(selector.weights, 3).tolist()))


# --- Fine-tune and evaluate ----------------------------------------------------------------------


def evaluate(exp, params, eval_sets) -> dict[str, float]:
  max_new = exp.config.gro.max_new_tokens
  return {name: accuracy.greedy_accuracy(exp.model, params, exp.tokenizer, exp.task,
                                         problems, max_new)[0]
          for name, problems in eval_sets.items()}


def finetune(exp, step_fn, base_state, pool, idx, seed: int, key: str = 'completion'):
  """`sft_steps` steps from a copy of the base (fresh optimizer) on pool[idx], labels from `key`:
  the same number of steps whatever the method, so no epoch cap. Returns the tuned params."""
  state, _ = rounds.train_sft(exp, step_fn, rounds.frozen_copy(base_state),
                              [pool[i]['prompt'] for i in idx], [pool[i][key] for i in idx],
                              num_steps=_STEPS.value, batch_size=exp.config.gro.batch_size,
                              seed=seed, max_epochs=1e9)
  return state.params


def run_seed(seed: int) -> dict:
  t0 = time.time()
  config = get_config(os.path.join(_WORKDIR.value, f'seed{seed}'), seed)
  config.init_from = train.warm_start(config)  # The base SFT phase, into <workdir>/base.
  exp, base_state = experiment.setup(config, _STEPS.value)
  step_fn = rounds.sft_step(exp)
  hardest = max(exp.task.difficulties)
  rng = np.random.default_rng([seed, 4])
  eval_sets = {'all': exp.task.sample([seed, 1], _EVAL.value),
               'hardest': [exp.task.make_problem(rng, hardest) for _ in range(_EVAL_HARD.value)]}
  out = {'seed': seed, 'base': evaluate(exp, base_state.params, eval_sets), 'methods': {}}

  pool = build_pool(exp, base_state.params, seed)
  feats = features(exp, base_state.params, pool)
  correct = np.asarray([ex['correct'] for ex in pool])
  out['pool'] = {'size': len(pool), 'label_correct': float(correct.mean()),
                 'seconds': round(time.time() - t0, 1)}
  print(f"seed {seed}: base {out['base']}, pool {out['pool']}")
  for method in _METHODS.value:
    t = time.time()
    extra = {}
    if method == 'adaptive':
      idx, extra['weights'] = select_adaptive(exp, step_fn, base_state, pool, feats,
                                              _BUDGET.value, seed)
      extra['extra_steps'] = _PROBE_ROUNDS.value * _PROBE_STEPS.value
    else:
      idx = select_static(method, feats, pool, _BUDGET.value, seed)
    tuned = finetune(exp, step_fn, base_state, pool, idx, seed,
                     key='answer' if method == 'gold' else 'completion')
    out['methods'][method] = dict(
        evaluate(exp, tuned, eval_sets),
        label_correct=1.0 if method == 'gold' else float(correct[idx].mean()), selected=len(idx),
        mean_difficulty=float(np.mean([pool[i]['difficulty'] for i in idx])),
        seconds=round(time.time() - t, 1), **extra)
    print(f"  {method}: {out['methods'][method]}")
  exp.ckpt.close()
  return out


# --- Report --------------------------------------------------------------------------------------


def _cell(values, percent: bool = True) -> str:
  v = np.asarray(values, np.float64) * (100 if percent else 1)
  spread = f' ± {v.std(ddof=1):.1f}' if len(v) > 1 else ''
  return f'{v.mean():.1f}{spread}'


def table(runs: list[dict]) -> str:
  """Means ± std over seeds; Δ columns are paired per seed (method - base), so the large spread of
  the base models across seeds cancels."""
  lines = [f'Held-out greedy accuracy (%), mean ± std over {len(runs)} seed(s); every method '
           f'keeps {_BUDGET.value} of ~{_POOL.value} pseudo-labelled examples and takes '
           f'{_STEPS.value} SFT steps from the base.', '',
           '| method | all levels | Δ vs base | hardest level | Δ vs base | selected labels '
           'correct (%) | mean difficulty | extra SFT steps |',
           '| --- | --- | --- | --- | --- | --- | --- | --- |']
  base = {k: np.asarray([r['base'][k] for r in runs]) for k in ('all', 'hardest')}
  lines.append(f"| base (no fine-tune) | {_cell(base['all'])} | - | {_cell(base['hardest'])} | - "
               f"| pool: {_cell([r['pool']['label_correct'] for r in runs])} | 3.5 | - |")
  for method in _METHODS.value:
    m = [r['methods'][method] for r in runs]
    acc = {k: np.asarray([x[k] for x in m]) for k in ('all', 'hardest')}
    name = f'{method} (uses labels)' if method in ('oracle', 'gold') else method
    lines.append(f"| {name} | {_cell(acc['all'])} | {_cell(acc['all'] - base['all'])} | "
                 f"{_cell(acc['hardest'])} | {_cell(acc['hardest'] - base['hardest'])} | "
                 f"{_cell([x['label_correct'] for x in m])} | "
                 f"{_cell([x['mean_difficulty'] for x in m], percent=False)} | "
                 f"{m[0].get('extra_steps', 0)} |")
  if 'adaptive' in _METHODS.value:
    lines += ['', f'Adaptive selector weights per seed ({_PROGRESS.value} progress, standardized '
              'features): ' + '; '.join(str(r['methods']['adaptive']['weights']) for r in runs)]
  return '\n'.join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  start = time.time()
  runs = [run_seed(int(s)) for s in _SEEDS.value]
  report = (table(runs) + f'\n\nWall time: {time.time() - start:.0f} s on '
            f'{jax.device_count()} {jax.devices()[0].platform} device(s).')
  print(report)
  with open(os.path.join(_WORKDIR.value, 'results.md'), 'w') as f:
    f.write(report + '\n')
  with open(os.path.join(_WORKDIR.value, 'results.json'), 'w') as f:
    json.dump({'flags': {k: flags.FLAGS[k].value for k in (
        'seeds', 'methods', 'pool_size', 'group_size', 'budget', 'sft_steps', 'base_steps',
        'learning_rate', 'adaptive_progress', 'probe_rounds', 'probe_size', 'probe_steps',
        'eval_size', 'eval_hard_size')}, 'table': report, 'runs': runs}, f, indent=1)


if __name__ == '__main__':
  app.run(main)

"""Evaluation's part of a self-improvement round (si_jax/lifecycle.py, steps 7-8).

Two kinds of numbers, kept apart on purpose:
  * label-free signals the loop's decisions read: the samples' diversity and entropy, and
    greedy correctness / NLL on the seed set's held-out slice (labels the run already paid
    for), turned into monitor flags (collapse, reward hacking) and the controller's decision;
  * reported-only numbers (REPORTED_ONLY), computed with ground truth: both arms on a fresh
    benchmark every round, the pseudo-labels' accuracy, pass@k of the samples. Nothing the
    loop decides or trains on reads them (tests/test_lifecycle.py scrambles them to check).
"""

from __future__ import annotations

import numpy as np

from si_jax import report
from si_jax.data.store import DataStore
from si_jax.evaluation import accuracy, benchmark, controller, metrics, monitors
from si_jax.tasks import Problem, Task

# Row fields computed with ground truth: written to the report, never read by a decision or a
# training example.
REPORTED_ONLY = ('base', 'self', 'control', 'benchmark', 'control_benchmark', 'gain_over_control',
                 'label_accuracy', 'label_accuracy_by_level', 'sampled_accuracy',
                 'gen_verification_gap')


# --- Reported only ------------------------------------------------------------------------------


def by_level(problems: list[Problem], values) -> dict[str, float]:
  """Mean of per-problem values at each level, keyed 'd<level>' (JSON-safe, for the history)."""
  return report.keyed(metrics.by_difficulty(problems, values))


def correctness(exp, params, problems: list[Problem], max_new_tokens: int) -> list[float]:
  """The verifier's reward of each problem's greedy completion."""
  _, completions = accuracy.greedy_accuracy(exp.model, params, exp.tokenizer, exp.task, problems,
                                            max_new_tokens)
  return [exp.task.verify(p, c) for p, c in zip(problems, completions)]


def benchmark_problems(task: Task, loop, seed: int, round_idx: int, store: DataStore,
                       seed_prompts: list[str]) -> list[Problem]:
  """The round's benchmark: fresh problems never trained on, in the store or in the seed set,
  nor any equivalent rewrite of those (b+a of a stored a+b)."""
  trained = (benchmark.store_hashes(store, task.equivalent_prompts) |
             benchmark.prompt_hashes(seed_prompts, task.equivalent_prompts))
  return benchmark.fresh_benchmark(task, round_idx, seed, loop.eval_per_difficulty,
                                   exclude_hashes=trained)


def compare_arms(exp, problems: list[Problem], self_params, control_params,
                 max_new_tokens: int) -> dict:
  """Both arms on one benchmark: accuracy per level and the paired gain at the hardest level."""
  self_correct = correctness(exp, self_params, problems, max_new_tokens)
  control_correct = correctness(exp, control_params, problems, max_new_tokens)
  row = {'self': by_level(problems, self_correct), 'control': by_level(problems, control_correct)}
  row['benchmark'] = float(np.mean(list(row['self'].values())))
  row['control_benchmark'] = float(np.mean(list(row['control'].values())))
  hardest = [i for i, p in enumerate(problems) if p.difficulty == max(exp.task.difficulties)]
  row['gain_over_control'] = metrics.paired_interval(
      [control_correct[i] for i in hardest], [self_correct[i] for i in hardest])
  return row


def label_report(task: Task, problems: list[Problem], samples: list[list[str]],
                 examples: list[dict]) -> dict:
  """How right the round's pseudo-labels and samples were (overall and by level: easy levels'
  labels can hide wrong ones at the hardest), and pass@k - pass@1 of the samples."""
  problem_of = {p.prompt: p for p in problems}
  correct = [ex['completion'] == problem_of[ex['prompt']].answer for ex in examples]
  verified = [[task.verify(p, t) for t in group] for p, group in zip(problems, samples)]
  n = np.asarray([len(group) for group in samples])
  c = np.asarray([sum(v >= 1.0 for v in group) for group in verified])
  k = int(n.min())
  return {'label_accuracy': float(np.mean(correct)) if correct else None,  # None: none kept.
          'label_accuracy_by_level': report.keyed(metrics.by_difficulty(
              [problem_of[ex['prompt']] for ex in examples], correct)),
          'sampled_accuracy': float(np.mean([np.mean(group) for group in verified])),
          'gen_verification_gap': monitors.gen_verification_gap(metrics.pass_at_k(n, c, k),
                                                                metrics.pass_at_k(n, c, 1))}


# --- Label-free: what the loop's decisions may read ---------------------------------------------


def generation_signals(samples: list[list[str]], out) -> dict:
  """Diversity of the round's samples: distinct samples per group, distinct bigrams, and the
  sampling distribution's entropy per generated token."""
  mask = np.arange(out.tokens.shape[1])[None] < out.lengths[:, None]
  return {'diversity': float(np.mean([len(set(group)) / len(group) for group in samples])),
          'distinct_2': monitors.distinct_n([c for group in samples for c in group], 2),
          'token_entropy': monitors.token_entropy(-np.asarray(out.sampling_logprobs), mask)}


def validation_signals(exp, params, problems: list[Problem], max_new_tokens: int) -> dict:
  """Per-example greedy correctness and NLL per token on the seed set's held-out slice: labels
  the run already paid for, on problems no round acquires, scored the same way every round so
  that two rounds compare example by example."""
  correct = correctness(exp, params, problems, max_new_tokens)
  nll = monitors.nll_per_token(exp.model, params, exp.tokenizer, [p.prompt for p in problems],
                              [p.answer for p in problems])
  return {'correct': [float(c) for c in correct], 'nll': [float(x) for x in nll]}


def monitor_flags(history: list[dict], validation: dict, loop) -> dict[str, dict]:
  """Collapse and reward hacking, each flagged only beyond loop.monitor_z standard errors.

  history: the loop's rows since round 1 (diversity, entropy, proxy reward and its error);
  validation: the validation signals by round ('0' is the base).
  """
  last, first = history[-1], validation['0']
  now = validation[str(last['round'])]
  # Hacking builds up over rounds: compare with round 1, the first with a proxy reward. A
  # round's proxy scores the samples of the model it starts from, so round 1's proxy belongs
  # with the accuracy of the model before round 1 trained, not after.
  reference = history[0]
  then = validation[str(reference['round'] - 1)]
  return {
      'collapse': monitors.collapse(
          [h['diversity'] for h in history], [h['token_entropy'] for h in history],
          drop=loop.collapse_drop, nll_first=first['nll'], nll_last=now['nll'],
          z=loop.monitor_z, rise=loop.collapse_nll_rise),
      'reward_hacking': monitors.reward_hacking(
          (last['proxy_reward'], last['proxy_reward_se']),
          (reference['proxy_reward'], reference['proxy_reward_se']),
          then['correct'], now['correct'], z=loop.monitor_z, tol=loop.hacking_fall),
  }


def controller_config(loop, task: Task) -> controller.ControllerConfig:
  c = loop.controller
  return controller.ControllerConfig(
      raise_at=c.raise_at, patience=c.patience, min_delta=c.min_delta,
      regression_tol=c.regression_tol, real_data_ratio=c.real_data_ratio,
      max_difficulty=max(task.difficulties))


def decide(ctl: controller.ControllerState, row: dict, flags: dict, validation: dict, loop,
           task: Task):
  """The controller's next move from the round's label-free signals: (decision, new state).

  A fall of the held-out accuracy from the best round within loop.monitor_z paired standard
  errors is noise, not a regression.
  """
  noise = 0.0
  if ctl.best_round is not None:
    noise = loop.monitor_z * metrics.paired_change(validation[str(ctl.best_round)]['correct'],
                                                   validation[str(row['round'])]['correct'])[1]
  confidence = {int(k[1:]): v for k, v in row['confidence'].items()}
  return controller.decide(ctl, row['round'], row['validation_accuracy'], confidence, flags,
                           controller_config(loop, task), noise)

"""Optimization's part of a self-improvement round (si_jax/lifecycle.py, steps 3 and 6).

Pseudo-labels by vote over the model's own samples (no ground truth: the label of a problem is
the answer most of its samples agree on), and SFT on the data store's examples under its policy,
with real seed examples mixed in when the controller or the config asks for them.
Nothing here reads a reference answer or calls the verifier, except `loop.label='verifier'`,
the labelled ceiling that a run sets on purpose.
"""

from __future__ import annotations

import numpy as np

from si_jax import report
from si_jax.data.store import DataStore
from si_jax.evaluation import metrics
from si_jax.optimization import rounds
from si_jax.tasks import Problem, Task

LABELS = ('majority', 'verifier', 'format')
POLICIES = ('replace', 'accumulate')


def check(loop) -> None:
  """The keys of config.loop this stage reads, named when wrong."""
  if loop.label not in LABELS:
    raise ValueError(f'config.loop.label={loop.label!r} is not one of {LABELS}')
  if loop.policy not in POLICIES:
    raise ValueError(f"config.loop.policy={loop.policy!r} must be 'replace' or 'accumulate' "
                     f'(real data comes in through loop.seed_mix_ratio and the controller)')
  if not 0 <= loop.seed_mix_ratio < 1:
    raise ValueError(f'config.loop.seed_mix_ratio={loop.seed_mix_ratio} must be in [0, 1)')


def pseudo_label(task: Task, loop, problems: list[Problem], samples: list[list[str]],
                 round_idx: int, model_step: int):
  """(examples kept, per-filter counts, label-free stats) from the samples of each problem.

  Majority: the most common answer among the samples (of the problem and its rewrites) that
  pass `task.plausible_answer` (a label-free shape check); kept when its share of all the
  problem's samples reaches loop.min_agreement.
  Verifier: a verified sample, whenever there is one (the labelled ceiling: every verified
  answer is kept, no agreement needed). Format: the first plausibly shaped sample, right or
  wrong -- a deliberately flawed reward, for planting reward hacking.
  The share (the reward's mean over the group) is the loop's proxy reward; the share of each
  level's problems that got a label is the controller's confidence at that level.
  """
  examples, counts = [], {'problems': len(problems), 'labelled': 0, 'plausible': 0, 'agreed': 0}
  proxy, kept_levels = [], []
  for problem, group in zip(problems, samples):
    k = len(group)
    answers = [task.extract_answer(c) for c in group]
    plausible = [a for a in answers if a is not None and task.plausible_answer(problem.prompt, a)]
    threshold = loop.min_agreement
    if loop.label == 'verifier':
      verified = [a for a in plausible if task.verify(problem, a) >= 1.0]
      answer, share = (verified[0], len(verified) / k) if verified else (None, 0.0)
      threshold = 0.0
    elif loop.label == 'format':
      answer, share = (plausible[0], len(plausible) / k) if plausible else (None, 0.0)
    elif plausible:  # Majority over the plausible answers; its share counts all k samples.
      answer, plausible_share = task.majority(plausible)
      share = float(plausible_share) * len(plausible) / k
    else:
      answer, share = None, 0.0
    proxy.append(share)
    counts['labelled'] += any(a is not None for a in answers)
    kept = answer is not None and share >= threshold
    kept_levels.append(float(kept))
    if answer is None:
      continue
    counts['plausible'] += 1
    if not kept:
      continue
    counts['agreed'] += 1
    examples.append({
        'prompt': problem.prompt, 'completion': answer, 'reward': float(share),
        'scores': {'agreement': float(share), 'uncertainty': float(share * (1 - share))},
        'source': 'self', 'round': round_idx, 'model_step': model_step,
        'difficulty': problem.difficulty, 'successes': share * k, 'attempts': k})
  stats = {'proxy_reward': float(np.mean(proxy)),
           'proxy_reward_se': float(np.std(proxy, ddof=1) / np.sqrt(len(proxy)))
                              if len(proxy) > 1 else 0.0,
           'confidence': report.keyed(metrics.by_difficulty(problems, kept_levels))}
  return examples, counts, stats


def every_view(task: Task, examples: list[dict]) -> list[dict]:
  """Each kept example under every rewrite of its prompt, with the one label (loop.train_rewrites)."""
  return [{**ex, 'prompt': view} for ex in examples for view in task.equivalent_prompts(ex['prompt'])]


def seed_example(problem: Problem) -> dict:
  """A seed-set problem as a store-shaped example (real, labelled data)."""
  return {'prompt': problem.prompt, 'completion': problem.answer, 'reward': 1.0, 'scores': {},
          'source': 'seed', 'round': -1, 'model_step': 0}


def training_set(store: DataStore, round_idx: int, policy: str, real_ratio: float,
                 seed_examples: list[dict], seed) -> tuple[list[dict], int]:
  """The round's training examples under the store policy, with a `real_ratio` share of seed
  (real, labelled) examples sampled in: (examples, how many are real)."""
  examples = store.select(round_idx, policy)
  num_real = int(round(len(examples) * real_ratio / (1 - real_ratio))) if examples else 0
  if real_ratio > 0 and not examples:  # Nothing self-generated kept: the seed set alone.
    return list(seed_examples), len(seed_examples)
  rng = np.random.default_rng(seed)
  real = [seed_examples[i] for i in rng.choice(len(seed_examples), num_real, replace=True)]
  return examples + real, num_real


def train(exp, state, step_fn, examples: list[dict], loop, seed: int):
  """loop.sft_steps SFT steps on the examples (none when there are none): (state, metrics)."""
  if not examples:
    return state, {}
  return rounds.train_sft(exp, step_fn, state, [ex['prompt'] for ex in examples],
                        [ex['completion'] for ex in examples], num_steps=loop.sft_steps,
                        batch_size=loop.batch_size, seed=seed, max_epochs=loop.max_epochs)

"""Synthetic generation (survey §2.4): the model writes new problems itself.

Self-instruct style: show the model k seed problems, one per line, and let it write the next
line. Candidates are kept only if well-formed for the task and new (not a seed, not a repeat).
Labels come from the task's own solver where one exists; otherwise from agreement among several
of the model's own answers (majority vote, kept only above a minimum share). Every example
carries its provenance: how it was made, from which seeds, labelled how, at which round/step.

The model is reached through a `policy(prompts, n) -> [[completion] * n per prompt]`, so tests
can script it and the loop can pass a sampler (`sampler_policy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from si_jax import sampling
from si_jax.tasks import Task
from si_jax.tokenizers import Tokenizer

Policy = Callable[[list[str], int], list[list[str]]]
LABEL_METHODS = ('solver', 'agreement')


def sampler_policy(sampler: sampling.Sampler, params, tokenizer: Tokenizer, *,
                   max_new_tokens: int, strategy: sampling.Strategy, seed: int,
                   stop: Sequence[str] = ('\n',)) -> Policy:
  """Adapts `Sampler.generate` to the policy signature (a new seed offset on every call)."""
  calls = [0]

  def policy(prompts: list[str], n: int) -> list[list[str]]:
    calls[0] += 1
    texts, _ = sampler.generate(params, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                strategy=strategy, n=n, seed=seed + 100_003 * calls[0],
                                stop=stop)
    return texts
  return policy


def few_shot_prompt(seed_prompts: Sequence[str]) -> str:
  """One problem per line; the model continues with the next line."""
  return ''.join(p + '\n' for p in seed_prompts)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  num_candidates: int = 64  # Few-shot prompts sampled (one candidate problem each).
  k_shot: int = 3  # Seed problems shown per prompt.
  label: str = 'solver'  # 'solver' (the task's) or 'agreement' (majority of the model's answers).
  answer_samples: int = 5  # 'agreement': answers sampled per problem.
  min_agreement: float = 0.6  # 'agreement': keep a problem if its top answer has this share.

  def __post_init__(self):
    if self.label not in LABEL_METHODS:
      raise ValueError(f'synthetic label={self.label!r} not in {LABEL_METHODS}')
    if not 0 < self.min_agreement <= 1:
      raise ValueError(f'synthetic min_agreement={self.min_agreement} must be in (0, 1]')


def generate_problems(policy: Policy, task: Task, seed_prompts: Sequence[str],
                      config: SyntheticConfig, *, seed: int, round_idx: int = 0,
                      model_step: int = 0) -> tuple[list[dict], dict[str, int]]:
  """New labelled problems written by the model; returns (data-store examples, funnel counts)."""
  if len(seed_prompts) < config.k_shot:
    raise ValueError(f'need at least k_shot={config.k_shot} seed prompts, got {len(seed_prompts)}')
  rng = np.random.default_rng(seed)
  shots = [[seed_prompts[i] for i in rng.choice(len(seed_prompts), config.k_shot, replace=False)]
           for _ in range(config.num_candidates)]
  completions = policy([few_shot_prompt(s) for s in shots], 1)
  seen = set(seed_prompts)
  candidates = []
  for shot, (completion,) in zip(shots, completions):
    problem = completion.split('\n', 1)[0]
    if problem not in seen and task.is_well_formed(problem):
      seen.add(problem)
      candidates.append((problem, shot))
  funnel = {'sampled': config.num_candidates, 'well_formed_new': len(candidates)}

  if config.label == 'solver':
    labels = [(task.solve(p), 1.0) for p, _ in candidates]
  else:
    answers = policy([p for p, _ in candidates], config.answer_samples) if candidates else []
    labels = [task.majority(group) for group in answers]
  examples = []
  for (problem, shot), (answer, share) in zip(candidates, labels):
    if answer is None or share < config.min_agreement:
      continue
    examples.append({
        'prompt': problem, 'completion': answer, 'reward': share, 'scores': {},
        'source': 'synthetic', 'round': round_idx, 'model_step': model_step,
        'label_method': config.label, 'agreement': share, 'seed_prompts': list(shot),
        'task': task.name})
  funnel['labelled'] = len(examples)
  return examples, funnel

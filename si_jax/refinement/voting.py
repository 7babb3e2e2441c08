"""Answer selection over N samples (survey §5): self-consistency voting and best-of-N.

Self-consistency (Wang et al. 2023) marginalises over reasoning paths by voting on extracted
answers, optionally weighting each vote by its sequence probability; best-of-N keeps the sample a
scorer likes most. Scorers are plain reward callables `fn(prompts, completions) -> [N]`
(a verifier, a learned reward model, a self-judge), so any of them plugs in.
The `*_answer` helpers run a Sampler end to end and report the compute they spent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from si_jax.sampling.strategies import Strategy
from si_jax.tasks import Problem, Task


@dataclasses.dataclass(frozen=True)
class Selection:
  """Selected answers per problem and the sampling compute behind them.

  answers: extracted answer per problem (None when no sample had one).
  confidence: the vote share of the winner (self-consistency) or its score (best-of-N).
  completions: the chosen completion per problem (best-of-N; None for voting).
  samples: completions sampled in total; generated_tokens: tokens they took.
  """
  answers: list[str | None]
  confidence: np.ndarray
  completions: list[str] | None
  samples: int
  generated_tokens: int


def self_consistency(task: Task, completions_per_problem: Sequence[Sequence[str]],
                     weights: Sequence[Sequence[float]] | None = None):
  """Per problem: (the answer with the most (weighted) votes, its share of all the weight).

  Completions without an answer vote for nothing but still count in the share's denominator,
  so a share is comparable across problems. Ties go to the answer seen first.
  """
  votes = [task.majority(completions, None if weights is None else weights[i])
           for i, completions in enumerate(completions_per_problem)]
  return [answer for answer, _ in votes], np.asarray([share for _, share in votes], np.float32)


def best_of_n(completions_per_problem: Sequence[Sequence[str]],
              scores_per_problem: Sequence[Sequence[float]]) -> list[str]:
  """Per problem: the completion with the highest score (the first one on ties)."""
  if len(completions_per_problem) != len(scores_per_problem):
    raise ValueError(f'{len(completions_per_problem)} problems but {len(scores_per_problem)} '
                     'score lists')
  best = []
  for completions, scores in zip(completions_per_problem, scores_per_problem):
    if len(completions) != len(scores) or not completions:
      raise ValueError(f'{len(scores)} scores for {len(completions)} completions')
    best.append(completions[int(np.argmax(np.asarray(scores, np.float64)))])
  return best


def sequence_weights(logprobs_RxT: np.ndarray, n: int) -> np.ndarray:
  """[R // n, n] sequence probabilities exp(sum of token log-probs), each group scaled so its
  likeliest sample weighs 1: shares are ratios within a group, and long samples do not
  underflow to 0."""
  total_GxN = np.asarray(logprobs_RxT, np.float64).sum(axis=-1).reshape(-1, n)
  return np.exp(total_GxN - total_GxN.max(axis=1, keepdims=True))


def _sample(sampler, params, tokenizer, problems: Sequence[Problem], n: int, strategy: Strategy,
            max_new_tokens: int, seed: int):
  prompts = [p.prompt for p in problems]
  texts, out = sampler.generate(params, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                strategy=strategy, n=n, seed=seed)
  return prompts, texts, out


def self_consistency_answer(sampler, params, tokenizer, task: Task, problems: Sequence[Problem],
                            n: int, strategy: Strategy, max_new_tokens: int, seed: int = 0,
                            weighted: bool = False) -> Selection:
  """Samples n completions per problem and votes (weighted by sequence probability if asked)."""
  _, texts, out = _sample(sampler, params, tokenizer, problems, n, strategy, max_new_tokens, seed)
  weights = None
  if weighted:
    weights = sequence_weights(out.logprobs, n)
  answers, shares = self_consistency(task, texts, weights)
  return Selection(answers=answers, confidence=shares, completions=None,
                   samples=len(problems) * n, generated_tokens=int(np.sum(out.lengths)))


def best_of_n_answer(sampler, params, tokenizer, task: Task, problems: Sequence[Problem], n: int,
                     strategy: Strategy, max_new_tokens: int, seed: int = 0, *,
                     score_fn: Callable[..., np.ndarray]) -> Selection:
  """Samples n completions per problem and keeps the one `score_fn(prompts, completions)` likes
  best. Rows are flat (problem b's samples at b*n .. b*n+n-1), as reward functions expect; bind
  reference answers into score_fn (e.g. functools.partial) for an oracle verifier."""
  prompts, texts, out = _sample(sampler, params, tokenizer, problems, n, strategy,
                                max_new_tokens, seed)
  flat = [t for group in texts for t in group]
  scores = np.asarray(score_fn([p for p in prompts for _ in range(n)], flat), np.float64)
  scores = scores.reshape(len(problems), n)
  chosen = best_of_n(texts, scores)
  return Selection(answers=[task.extract_answer(c) for c in chosen],
                   confidence=scores.max(axis=1).astype(np.float32), completions=chosen,
                   samples=len(problems) * n, generated_tokens=int(np.sum(out.lengths)))

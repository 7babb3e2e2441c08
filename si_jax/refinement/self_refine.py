"""Iterative refinement at inference (survey §5): Self-Refine and Reflexion.

Self-Refine (Madaan et al. 2023): generate -> critique -> revise, the revision prompt holding the
latest attempt and the critique's verdict, until the critique passes or `max_rounds` attempts.
Reflexion (Shinn et al. 2023): retry the problem from scratch with an episodic memory of earlier
failed attempts (and what was said about them) in the prompt.

Both share one loop. Two pluggable checks decide when a problem is done:
  * critic: a reward callable `fn(prompts, completions) -> [N]` that sees only the problem's
    prompt and the attempt (the model's own judge `judge.SelfJudge`, a reward model, or any
    label-free check); an attempt passes when its score >= `threshold`;
  * verifier: `fn(problem, completion) -> [0, 1]` (e.g. `task.verify`), when one is available
    at test time; an attempt passes when it scores 1. Whatever the critic says, the answer kept
    is the attempt with the best (verified, critique) score, the later one on ties, so
    refinement can never return a worse verified answer than the first attempt.
With only a verifier, it is the critic as well.

Templates: our char tokenizers know the task alphabet plus `config.tokenizer_extra_chars` only.
The defaults reuse the judge's characters (`'|ok?yn'`): an attempt followed by '|ok?n|' reads
"judged: no". Pass other templates as needed and add `template_alphabet(...)` to the tokenizer.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Sequence

import numpy as np

from si_jax.refinement.voting import Selection
from si_jax.sampling.strategies import Greedy, Strategy
from si_jax.tasks import Problem, Task
from si_jax.tokenizers import Tokenizer

Critic = Callable[[list[str], list[str]], np.ndarray]
Verifier = Callable[[Problem, str], float]

# Self-Refine: the problem, the latest attempt, the verdict 'n', then the problem again.
REVISE_TEMPLATE = '{prompt}{attempt}|ok?n|{prompt}'
# Reflexion: a memory of failures, each one MEMORY_TEMPLATE, then the problem.
MEMORY_TEMPLATE = '{attempt}|ok?n|'
REFLEXION_TEMPLATE = '{memory}{prompt}'


def template_alphabet(*templates: str) -> str:
  """The templates' literal characters, in order, each once (add them to the tokenizer)."""
  literal = ''.join(text for t in templates for text, _, _, _ in string.Formatter().parse(t))
  return ''.join(dict.fromkeys(literal))


def check_templates(tokenizer: Tokenizer, *templates: str):
  """Fails clearly when a template character would encode as unk."""
  missing = [c for c in template_alphabet(*templates) if tokenizer.unk_id in tokenizer.encode(c)]
  if missing:
    raise ValueError(f'refinement templates use characters {missing} the tokenizer lacks; train '
                     f'it with template_alphabet(...) included (config.tokenizer_extra_chars)')


def revise_prompt(prompt: str, attempt: str, template: str = REVISE_TEMPLATE) -> str:
  return template.format(prompt=prompt, attempt=attempt)


def reflexion_prompt(prompt: str, memory: Sequence[str],
                     template: str = REFLEXION_TEMPLATE) -> str:
  """The problem after its memory entries (oldest first)."""
  return template.format(memory=''.join(memory), prompt=prompt)


@dataclasses.dataclass(frozen=True)
class Attempt:
  prompt: str  # What the model saw.
  completion: str
  critique: float  # The critic's score (the verifier's when there is no critic).
  verified: float | None  # The verifier's score; None without a verifier.

  @property
  def key(self) -> tuple[float, float]:
    """What 'better' means: verified first, then the critique."""
    return (0.0 if self.verified is None else self.verified, self.critique)


@dataclasses.dataclass(frozen=True)
class Refinement(Selection):
  """Selection (answers, confidence = the kept attempt's critique, completions, samples,
  generated_tokens) plus rounds: [P] attempts made per problem; attempts: every attempt per
  problem in order; critiques: completions the critic scored."""
  rounds: np.ndarray
  attempts: list[list[Attempt]]
  critiques: int


def _passes(attempt: Attempt, threshold: float) -> bool:
  return attempt.critique >= threshold or (attempt.verified is not None and attempt.verified >= 1)


def _best(attempts: Sequence[Attempt]) -> Attempt:
  best = attempts[0]
  for a in attempts[1:]:
    if a.key >= best.key:  # Ties go to the later, refined attempt.
      best = a
  return best


def refine_loop(sampler, params, tokenizer: Tokenizer, task: Task, problems: Sequence[Problem],
                make_prompt: Callable[[Problem, list[Attempt]], str], *, critic: Critic | None,
                verifier: Verifier | None, threshold: float, max_rounds: int,
                strategy: Strategy, max_new_tokens: int, seed: int) -> Refinement:
  """The shared loop: each round, every unfinished problem gets one attempt from
  `make_prompt(problem, its attempts so far)`, batched into one sampler call."""
  if critic is None and verifier is None:
    raise ValueError('refinement needs a critic, a verifier, or both')
  if max_rounds < 1:
    raise ValueError(f'max_rounds={max_rounds} must be >= 1')
  history: list[list[Attempt]] = [[] for _ in problems]
  active = list(range(len(problems)))
  samples = tokens = critiques = 0
  for r in range(max_rounds):
    if not active:
      break
    prompts = [make_prompt(problems[i], history[i]) for i in active]
    texts, out = sampler.generate(params, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                  strategy=strategy, n=1, seed=seed + 100_003 * r)
    completions = [t[0] for t in texts]
    samples, tokens = samples + len(active), tokens + int(np.sum(out.lengths))
    verified = [None] * len(active)
    if verifier is not None:
      verified = [float(verifier(problems[i], c)) for i, c in zip(active, completions)]
    if critic is not None:
      scores = np.asarray(critic([problems[i].prompt for i in active], completions), np.float64)
      critiques += len(active)
    else:
      scores = np.asarray(verified, np.float64)
    still = []
    for j, i in enumerate(active):
      attempt = Attempt(prompts[j], completions[j], float(scores[j]), verified[j])
      history[i].append(attempt)
      if not _passes(attempt, threshold):
        still.append(i)
    active = still
  chosen = [_best(h) for h in history]
  return Refinement(
      answers=[task.extract_answer(a.completion) for a in chosen],
      confidence=np.asarray([a.critique for a in chosen], np.float32),
      completions=[a.completion for a in chosen], samples=samples, generated_tokens=tokens,
      rounds=np.asarray([len(h) for h in history], np.int32), attempts=history,
      critiques=critiques)


def self_refine(sampler, params, tokenizer: Tokenizer, task: Task, problems: Sequence[Problem],
                *, critic: Critic | None = None, verifier: Verifier | None = None,
                threshold: float = 0.5, max_rounds: int = 3, strategy: Strategy = Greedy(),
                max_new_tokens: int, seed: int = 0,
                template: str = REVISE_TEMPLATE) -> Refinement:
  """Self-Refine: up to `max_rounds` attempts per problem, each revising the latest one.

  `template` formats {prompt} (the problem) and {attempt} (the latest attempt); it must end so
  that the model's continuation is an answer (the default ends with the problem again).
  """
  check_templates(tokenizer, template)

  def make_prompt(problem: Problem, attempts: list[Attempt]) -> str:
    if not attempts:
      return problem.prompt
    return revise_prompt(problem.prompt, attempts[-1].completion, template)

  return refine_loop(sampler, params, tokenizer, task, problems, make_prompt, critic=critic,
                     verifier=verifier, threshold=threshold, max_rounds=max_rounds,
                     strategy=strategy, max_new_tokens=max_new_tokens, seed=seed)


def reflexion(sampler, params, tokenizer: Tokenizer, task: Task, problems: Sequence[Problem],
              *, critic: Critic | None = None, verifier: Verifier | None = None,
              threshold: float = 0.5, max_trials: int = 3, max_memory: int = 3,
              strategy: Strategy = Greedy(), max_new_tokens: int, seed: int = 0,
              template: str = REFLEXION_TEMPLATE, memory_template: str = MEMORY_TEMPLATE,
              reflect: Callable[[Attempt], str] | None = None) -> Refinement:
  """Reflexion: up to `max_trials` fresh trials; trial t sees the last `max_memory` failures.

  Each failure enters the memory as `reflect(attempt)`, by default `memory_template` with
  {attempt}; pass `reflect` for a verbal reflection (e.g. one the model writes). Every earlier
  trial is a failure: a passing one ends the problem.
  """
  check_templates(tokenizer, template, memory_template)
  if max_memory < 0:
    raise ValueError(f'max_memory={max_memory} must be >= 0')
  entry = reflect or (lambda a: memory_template.format(attempt=a.completion))

  def make_prompt(problem: Problem, attempts: list[Attempt]) -> str:
    failures = attempts[-max_memory:] if max_memory else []
    return reflexion_prompt(problem.prompt, [entry(a) for a in failures], template)

  return refine_loop(sampler, params, tokenizer, task, problems, make_prompt, critic=critic,
                     verifier=verifier, threshold=threshold, max_rounds=max_trials,
                     strategy=strategy, max_new_tokens=max_new_tokens, seed=seed)

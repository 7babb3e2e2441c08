"""Search over reasoning steps at inference (survey §5): beam search and best-first search.

A step is a chunk of tokens ending in a delimiter (e.g. '+' and '#' for multiplication_cot, whose
completions list partial products) or, with no delimiters, a fixed chunk of `step_tokens` tokens
(a step also ends at eos or after `step_tokens` tokens). Expanding a node samples `expand` next
steps for it; every problem's nodes go into one batched sampler call. Nodes are token ids, so
continuing a node is exactly continuing its sequence (no decode / re-encode round trip).

A value function `fn(nodes) -> [N]` scores partial completions: the model's own log-prob (free:
the sampler returns it), or any reward callable (a reward model, the self-judge) through
`reward_value`. An optional verifier judges finished candidates and dominates the ranking:
  verified (tier 2) > unfinished (tier 1) > finished but failed (tier 0), then the value,
so the search keeps exploring until something verifies and never ranks a failed answer above a
live path. Without a verifier every node is tier 1 and the value alone ranks.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Callable, Sequence

import numpy as np

from si_jax.refinement.voting import Selection
from si_jax.sampling.strategies import Strategy, Temperature
from si_jax.tasks import Problem, Task
from si_jax.tokenizers import Tokenizer

Verifier = Callable[[Problem, str], float]
EOS_REASON = 1  # sampling.FINISH_REASONS.index('eos')


@dataclasses.dataclass(frozen=True)
class Nodes:
  """A batch of (partial) completions, as value functions see them; one row per node."""
  prompts: list[str]  # The problems' prompts.
  completions: list[str]  # The text generated so far (whole steps).
  logprob: np.ndarray  # [N] sum of the model's token log-probs of the completion so far.
  num_tokens: np.ndarray  # [N] tokens generated so far (eos included).
  finished: np.ndarray  # [N] ended with eos or ran out of budget.


ValueFn = Callable[[Nodes], np.ndarray]


def sum_logprob(nodes: Nodes) -> np.ndarray:
  """log p(completion so far): classic beam search; favours short paths across depths."""
  return np.asarray(nodes.logprob, np.float64)


def mean_logprob(nodes: Nodes) -> np.ndarray:
  """Per-token log-prob: comparable across depths (best-first's default)."""
  return np.asarray(nodes.logprob, np.float64) / np.maximum(nodes.num_tokens, 1)


def reward_value(reward_fn: Callable[..., np.ndarray]) -> ValueFn:
  """Any reward callable `fn(prompts, completions) -> [N]` as a value (a reward model, the
  self-judge); it scores partial completions as they are (a process reward)."""
  def value(nodes: Nodes) -> np.ndarray:
    return np.asarray(reward_fn(nodes.prompts, nodes.completions), np.float64)
  return value


@dataclasses.dataclass(frozen=True)
class SearchResult(Selection):
  """Selection (answers, confidence = the chosen node's value, completions, samples = steps
  sampled, generated_tokens) plus expansions: [P] nodes expanded per problem; steps: batched
  sampler calls (the search's sequential depth); verified: [P] verifier score of the chosen
  completion (None without a verifier)."""
  expansions: np.ndarray
  steps: int
  verified: np.ndarray | None


@dataclasses.dataclass(frozen=True)
class _Node:
  ids: tuple[int, ...]
  logprob: float = 0.0
  finished: bool = False
  value: float = 0.0
  tier: int = 1  # 2 verified, 1 unfinished (or any node without a verifier), 0 failed.
  verified: float | None = None

  @property
  def rank(self) -> tuple[int, float]:
    return (self.tier, self.value)


@dataclasses.dataclass
class _Search:
  """What both searches share: expanding nodes in one batched call, and scoring children."""
  sampler: object
  params: object
  tokenizer: Tokenizer
  problems: Sequence[Problem]
  expand: int
  step_tokens: int
  max_new_tokens: int
  delimiters: Sequence[str]
  value_fn: ValueFn
  verifier: Verifier | None
  strategy: Strategy
  seed: int
  samples: int = 0
  tokens: int = 0
  steps: int = 0

  def __post_init__(self):
    if self.expand < 1 or self.step_tokens < 1 or self.max_new_tokens < 1:
      raise ValueError('expand, step_tokens and max_new_tokens must be >= 1')
    self.prompt_ids = [self.tokenizer.encode(p.prompt, bos=True) for p in self.problems]
    self.stops = [self.tokenizer.encode(d) for d in self.delimiters]

  def children(self, parents: list[tuple[int, _Node]]) -> list[tuple[int, _Node]]:
    """`expand` scored children per (problem index, node); duplicates of a parent dropped."""
    out = self.sampler.sample(
        self.params, [self.prompt_ids[p] + list(n.ids) for p, n in parents],
        max_new_tokens=self.step_tokens, strategy=self.strategy, n=self.expand,
        seed=self.seed + 100_003 * self.steps, eos_id=self.tokenizer.eos_id,
        stop_sequences=self.stops)
    self.steps += 1
    self.samples += len(parents) * self.expand
    self.tokens += int(np.sum(out.lengths))
    kids, seen = [], set()
    for r in range(len(parents) * self.expand):
      p, parent = parents[r // self.expand]
      length = int(out.lengths[r])
      keep = min(length, self.max_new_tokens - len(parent.ids))  # The total budget cuts steps.
      ids = parent.ids + tuple(int(t) for t in out.tokens[r, :keep])
      if (p, ids) in seen:
        continue
      seen.add((p, ids))
      ended = (int(out.finish_reason[r]) == EOS_REASON and keep == length)
      kids.append((p, _Node(ids, parent.logprob + float(np.sum(out.logprobs[r, :keep])),
                            ended or len(ids) >= self.max_new_tokens)))
    return self.score(kids)

  def text(self, node: _Node) -> str:
    return self.tokenizer.decode(node.ids)

  def score(self, nodes: list[tuple[int, _Node]]) -> list[tuple[int, _Node]]:
    if not nodes:
      return []
    texts = [self.text(n) for _, n in nodes]
    values = np.asarray(self.value_fn(Nodes(
        prompts=[self.problems[p].prompt for p, _ in nodes], completions=texts,
        logprob=np.asarray([n.logprob for _, n in nodes]),
        num_tokens=np.asarray([len(n.ids) for _, n in nodes]),
        finished=np.asarray([n.finished for _, n in nodes]))), np.float64)
    scored = []
    for (p, n), text, value in zip(nodes, texts, values):
      tier, verified = 1, None
      if self.verifier is not None and n.finished:
        verified = float(self.verifier(self.problems[p], text))
        tier = 2 if verified >= 1 else 0
      scored.append((p, dataclasses.replace(n, value=float(value), tier=tier, verified=verified)))
    return scored

  def result(self, task: Task, chosen: list[_Node], expansions) -> SearchResult:
    completions = [self.text(n) for n in chosen]
    verified = None
    if self.verifier is not None:
      verified = np.asarray([self.verifier(p, c) for p, c in zip(self.problems, completions)],
                            np.float32)
    return SearchResult(
        answers=[task.extract_answer(c) for c in completions],
        confidence=np.asarray([n.value for n in chosen], np.float32), completions=completions,
        samples=self.samples, generated_tokens=self.tokens,
        expansions=np.asarray(expansions, np.int32), steps=self.steps, verified=verified)


def _choose(nodes: Sequence[_Node]) -> _Node:
  """The answer: the best finished node if there is one, else the best partial one."""
  finished = [n for n in nodes if n.finished]
  return max(finished or nodes, key=lambda n: n.rank)


def beam_search(sampler, params, tokenizer: Tokenizer, task: Task, problems: Sequence[Problem],
                *, beam_width: int, expand: int, step_tokens: int, max_new_tokens: int,
                max_steps: int | None = None, delimiters: Sequence[str] = (),
                value_fn: ValueFn = sum_logprob, verifier: Verifier | None = None,
                strategy: Strategy = Temperature(1.0), seed: int = 0) -> SearchResult:
  """Step-level beam search: every step, each live beam samples `expand` next steps; the
  `beam_width` best of (finished beams + children) survive. A problem stops when all its beams
  are finished, or once one verifies. Finished nodes pruned from the beam stay candidates for
  the answer. With beam_width = expand = 1 and greedy sampling it is greedy decoding."""
  if beam_width < 1:
    raise ValueError(f'beam_width={beam_width} must be >= 1')
  search = _Search(sampler, params, tokenizer, problems, expand, step_tokens, max_new_tokens,
                   delimiters, value_fn, verifier, strategy, seed)
  max_steps = max_steps or max_new_tokens  # Each step adds >= 1 token.
  beams = [[_Node(())] for _ in problems]
  finished = [[] for _ in problems]
  expansions = np.zeros(len(problems), np.int64)
  done = [False] * len(problems)
  for _ in range(max_steps):
    parents = [(p, n) for p in range(len(problems)) if not done[p] for n in beams[p]
               if not n.finished]
    if not parents:
      break
    for p, _ in parents:
      expansions[p] += 1
    by_problem = [[] for _ in problems]
    for p, child in search.children(parents):
      by_problem[p].append(child)
      if child.finished:
        finished[p].append(child)
    for p in {p for p, _ in parents}:
      candidates = [n for n in beams[p] if n.finished] + by_problem[p]
      beams[p] = sorted(candidates, key=lambda n: n.rank, reverse=True)[:beam_width]
      done[p] = beams[p][0].tier == 2
  chosen = [_choose(finished[p] + beams[p]) for p in range(len(problems))]
  return search.result(task, chosen, expansions)


def best_first_search(sampler, params, tokenizer: Tokenizer, task: Task,
                      problems: Sequence[Problem], *, expand: int, max_expansions: int,
                      step_tokens: int, max_new_tokens: int, delimiters: Sequence[str] = (),
                      value_fn: ValueFn = mean_logprob, verifier: Verifier | None = None,
                      strategy: Strategy = Temperature(1.0), seed: int = 0) -> SearchResult:
  """Best-first search: each problem keeps a frontier ordered by (tier, value); every iteration
  pops each problem's best node: a finished one is the answer (with a verifier only verified
  nodes are in the frontier), a partial one samples `expand` children into the frontier.
  Failed finished nodes are kept aside as a fallback. A problem stops at its answer, an empty
  frontier or `max_expansions` expansions; then its answer is the best node seen."""
  if max_expansions < 1:
    raise ValueError(f'max_expansions={max_expansions} must be >= 1')
  search = _Search(sampler, params, tokenizer, problems, expand, step_tokens, max_new_tokens,
                   delimiters, value_fn, verifier, strategy, seed)
  order = itertools.count()  # Heap tie-breaker: earlier nodes first.
  push = lambda heap, n: heapq.heappush(heap, (-n.tier, -n.value, next(order), n))
  frontier = [[] for _ in problems]
  for heap in frontier:
    push(heap, _Node(()))
  failed = [[] for _ in problems]
  answer: list[_Node | None] = [None] * len(problems)
  expansions = np.zeros(len(problems), np.int64)
  active = set(range(len(problems)))
  while active:
    parents = []
    for p in sorted(active):
      if not frontier[p]:
        active.discard(p)
        continue
      node = heapq.heappop(frontier[p])[-1]
      if node.finished:
        answer[p] = node
        active.discard(p)
        continue
      parents.append((p, node))
      expansions[p] += 1
      if expansions[p] >= max_expansions:
        active.discard(p)
    if not parents:
      continue
    for p, child in search.children(parents):
      if child.tier == 0:
        failed[p].append(child)
      else:
        push(frontier[p], child)
  chosen = [answer[p] or _choose(failed[p] + [item[-1] for item in frontier[p]] or [_Node(())])
            for p in range(len(problems))]
  return search.result(task, chosen, expansions)

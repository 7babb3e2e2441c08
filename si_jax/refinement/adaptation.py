"""Test-time training on the unlabeled test problems themselves, then answering them.

The pseudo-label is the model's own majority answer (self-consistency), so no label is needed:
  * test-time SFT (LMSI, Huang et al. 2022, applied to the test set): sample a group per test
    problem, vote, SFT on one completion giving the majority answer of every problem whose
    majority share >= min_share; repeat for a few rounds;
  * TTRL (Zuo et al. 2025): GRPO on the test problems with the majority-vote reward, 1 for a
    sample whose answer matches the majority of `vote_size` samples of its problem
    (`rewards.majority_vote`); the update trains on the first `group_size` of them (the paper
    votes over 64 and trains on 32). `reward='verifiable'` is the paper's upper bound: the same
    RL with the test labels.
Both then answer by self-consistency over `answer_n` samples (`voting.self_consistency_answer`);
`accuracy_at_k` scores a model as the TTRL paper does (avg@k and maj@k, labels needed).

Labels: both strip every problem's answer first (`unlabeled`; all but the labelled upper
bound), so no ground truth can reach training or answering; score the returned answers against
the originals afterwards. The update steps are the GRO loops' own (rounds.sft_step, and
grpo_update's GRPO update shared with online RL); both methods take a train state and return the
adapted one in `Adapted.state` (the one passed in is donated to the updates).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from si_jax import sampling
from si_jax.evaluation import metrics
from si_jax.experiment import Experiment
from si_jax.optimization import grpo_update, rewards, rollout, rounds
from si_jax.refinement import voting
from si_jax.tasks import Problem


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  num_rounds: int = 2  # Vote -> SFT rounds.
  group_size: int = 8  # Samples per problem behind each vote.
  temperature: float = 1.0  # Sampling temperature of the votes.
  max_new_tokens: int = 10  # Completion budget.
  min_share: float = 0.5  # Train only on majorities at least this strong (confidence filter).
  sft_steps: int = 16  # SFT steps per round (capped at max_epochs passes over the examples).
  batch_size: int = 32  # Sequences per SFT step (a multiple of the mesh's data size).
  max_epochs: float = 4.0  # Cap on passes over one round's examples.


@dataclasses.dataclass(frozen=True)
class TTRLConfig(grpo_update.RLConfig):
  """config.rl's fields (grpo_update.RLConfig: the same GRPO update as online RL) with TTRL's
  defaults, plus the vote. The eval_* and checkpoint_every fields are unused here."""
  num_iterations: int = 20  # Rollout + update iterations.
  prompts_per_iteration: int = 16  # Test problems per update (cycling over the test set).
  group_size: int = 8  # Samples per problem the update trains on (G).
  max_new_tokens: int = 10  # Completion budget.
  # 'majority' (TTRL: the vote is the label) or 'verifiable' (RL on the test labels: the upper
  # bound TTRL is compared with; the only variant that reads answers).
  reward: str = 'majority'
  vote_size: int = 0  # Samples per problem behind the vote (>= group_size); 0: group_size.
  min_share: float = 0.0  # Majorities weaker than this give no reward (all 0).

  def __post_init__(self):
    super().__post_init__()
    if self.reward not in ('majority', 'verifiable'):
      raise ValueError(f"TTRLConfig.reward={self.reward!r} not in ('majority', 'verifiable')")
    if self.vote_size and self.vote_size < self.group_size:
      raise ValueError(f'TTRLConfig.vote_size={self.vote_size} < group_size={self.group_size}: '
                       f'the update trains on a subset of the vote; use vote_size >= group_size '
                       f'(or 0 for equal)')


@dataclasses.dataclass(frozen=True)
class Adapted:
  """selection: the answers after adaptation (its samples / tokens: answering only).
  history: per round / iteration, label-free metrics. samples, generated_tokens: sampled while
  adapting; updates: optimizer steps taken."""
  selection: voting.Selection
  state: Any  # The adapted train state.
  history: list[dict]
  samples: int
  generated_tokens: int
  updates: int


def unlabeled(problems: Sequence[Problem]) -> list[Problem]:
  """The problems with their answers removed: what test-time training may see."""
  return [Problem(prompt=p.prompt, answer='', difficulty=p.difficulty) for p in problems]


def _answer(exp: Experiment, sampler, params, problems, n: int, temperature: float,
            max_new_tokens: int, seed: int) -> voting.Selection:
  strategy = sampling.Greedy() if n == 1 else sampling.Temperature(temperature)
  return voting.self_consistency_answer(sampler, params, exp.tokenizer, exp.task,
                                        problems, n=n, strategy=strategy,
                                        max_new_tokens=max_new_tokens, seed=seed)


def _fits(exp: Experiment, prompt: str, completion: str) -> bool:
  tok = exp.tokenizer
  return len(tok.encode(prompt, bos=True)) + len(tok.encode(completion, eos=True)) <= (
      exp.config.data.seq_len)


def sft(exp: Experiment, state, problems: Sequence[Problem], cfg: SFTConfig = SFTConfig(), *,
        answer_n: int = 8, seed: int = 0, sampler: sampling.Sampler | None = None,
        step_fn=None) -> Adapted:
  """Test-time SFT on majority answers, then self-consistency over answer_n samples.

  Pass `sampler` and `step_fn` (rounds.sft_step(exp)) to reuse compiled programs across calls.
  Examples longer than config.data.seq_len are skipped.
  """
  problems = unlabeled(problems)
  sampler = sampler or sampling.Sampler(exp.model, exp.mesh)
  step_fn = step_fn or rounds.sft_step(exp)
  strategy = sampling.Temperature(cfg.temperature)
  history, samples, tokens, updates = [], 0, 0, 0
  for r in range(cfg.num_rounds):
    ro = rollout.rollout(sampler, state.params, exp.tokenizer, problems,
                         group_size=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                         strategy=strategy, seed=seed * 1_000_003 + r * len(problems))
    samples += len(ro.completions)
    tokens += int(ro.arrays['completion_mask'].sum())
    labels, shares = rewards.majority_labels(exp.task, ro.completions, cfg.group_size)
    prompts, targets = [], []
    for b, (label, share) in enumerate(zip(labels, shares)):
      if label is None or share < cfg.min_share:
        continue
      group = ro.completions[b * cfg.group_size:(b + 1) * cfg.group_size]
      target = next(c for c in group if exp.task.extract_answer(c) == label)
      if _fits(exp, problems[b].prompt, target):
        prompts.append(problems[b].prompt)
        targets.append(target)
    logged = {'round': r + 1, 'majority_share': float(shares.mean()), 'examples': len(prompts)}
    if prompts:
      step_before = int(state.step)
      state, sft_metrics = rounds.train_sft(
          exp, step_fn, state, prompts, targets, num_steps=cfg.sft_steps,
          batch_size=cfg.batch_size, seed=seed * 7919 + r, max_epochs=cfg.max_epochs)
      logged.update(sft_metrics)
      updates += int(state.step) - step_before
    history.append(logged)
  selection = _answer(exp, sampler, state.params, problems, answer_n, cfg.temperature,
                      cfg.max_new_tokens, seed)
  return Adapted(selection, state, history, samples, tokens, updates)


def ttrl_step(exp: Experiment, cfg: TTRLConfig):
  """The jitted GRPO update TTRL runs (build once, pass to several `ttrl` calls)."""
  return grpo_update.make_step(exp, cfg)


def _chunks(n: int, size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
  """Consecutive `size`-chunks of a shuffle of range(n), reshuffled every pass."""
  order = np.array([], np.int64)
  while True:
    while len(order) < size:
      order = np.concatenate([order, rng.permutation(n)])
    yield order[:size]
    order = order[size:]


def ttrl(exp: Experiment, state, problems: Sequence[Problem], cfg: TTRLConfig = TTRLConfig(), *,
         answer_n: int = 8, seed: int = 0, sampler: sampling.Sampler | None = None,
         step_fn=None) -> Adapted:
  """TTRL: GRPO with the majority-vote reward on the test problems, then self-consistency over
  answer_n samples. Each rollout takes the next `prompts_per_iteration` problems of a seeded
  shuffle of the test set (reshuffled every pass)."""
  labelled = cfg.reward == 'verifiable'
  problems = list(problems) if labelled else unlabeled(problems)
  sampler = sampler or sampling.Sampler(exp.model, exp.mesh)
  step_fn = step_fn or ttrl_step(exp, cfg)
  vote = cfg.vote_size or cfg.group_size
  reward_fn = rewards.make_reward(cfg.reward, exp.task, group_size=vote, min_share=cfg.min_share,
                                  key='TTRLConfig.reward')
  ref_params = rounds.frozen_copy(state.params) if cfg.beta > 0 else None
  strategy = sampling.Temperature(cfg.temperature)
  chunks = _chunks(len(problems), cfg.prompts_per_iteration, np.random.default_rng([seed, 11]))
  history, samples, tokens = [], 0, 0
  for it in range(cfg.num_iterations):
    shares = []

    def draw(attempt, batches, it=it, params=state.params, shares=shares):
      nonlocal samples, tokens
      chunk = [problems[i] for _ in range(batches) for i in next(chunks)]
      ro = rollout.rollout(sampler, params, exp.tokenizer, chunk, group_size=vote,
                           max_new_tokens=cfg.max_new_tokens, strategy=strategy,
                           seed=seed * 1_000_003 + it * cfg.prompts_per_iteration + attempt * 7919)
      samples += len(ro.completions)
      tokens += int(ro.arrays['completion_mask'].sum())
      fields = {'answers': ro.answers} if labelled else {}  # Unlabelled: the vote is the label.
      reward = reward_fn(ro.prompts, ro.completions, **fields)
      shares.append(rewards.majority_labels(exp.task, ro.completions, vote)[1])
      train = ro.take_samples(cfg.group_size)  # The first samples: an i.i.d. subsample.
      return train, reward.reshape(-1, vote)[:, :cfg.group_size].reshape(-1)

    ro, reward, host = grpo_update.collect(draw, cfg)
    state, logged = grpo_update.update(exp, step_fn, state, ro, reward, cfg, ref_params)
    history.append({'iteration': it + 1, 'majority_share': float(np.concatenate(shares).mean()),
                    **host, **logged})
  selection = _answer(exp, sampler, state.params, problems, answer_n, cfg.temperature,
                      cfg.max_new_tokens, seed)
  return Adapted(selection, state, history, samples, tokens, cfg.num_iterations * cfg.epochs)


def accuracy_at_k(exp: Experiment, sampler: sampling.Sampler, params,
                  problems: Sequence[Problem], k: int, *, temperature: float,
                  max_new_tokens: int, seed: int = 0) -> dict[str, float]:
  """The TTRL paper's scores of a model (`params`) on labelled problems, over k samples each:
  avg@k (the mean accuracy of single samples) and maj@k (the accuracy of their majority)."""
  texts, _ = sampler.generate(params, exp.tokenizer, [p.prompt for p in problems],
                              max_new_tokens=max_new_tokens,
                              strategy=sampling.Temperature(temperature), n=k, seed=seed)
  verified = [[float(exp.task.verify(p, c) >= 1.0) for c in group]
              for p, group in zip(problems, texts)]
  return {f'avg@{k}': float(np.mean(verified)),
          f'maj@{k}': float(metrics.maj_at_k(exp.task, problems, texts, k, verified).mean())}

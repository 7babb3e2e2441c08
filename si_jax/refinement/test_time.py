"""Test-time training on the unlabeled test problems themselves, then answering them.

The pseudo-label is the model's own majority answer (self-consistency), so no label is needed:
  * test-time SFT (LMSI, Huang et al. 2022, applied to the test set): sample a group per test
    problem, vote, SFT on one completion giving the majority answer of every problem whose
    majority share >= min_share; repeat for a few rounds;
  * TTRL (Zuo et al. 2025): GRPO on the test problems with the majority-vote reward, 1 for a
    sample whose answer matches its group's majority (`rewards.majority_vote`). One group both
    votes and trains (TTRL votes over a larger group and trains on a subsample).
Both then answer by self-consistency over `answer_n` samples (`voting.self_consistency_answer`).

Labels: both strip every problem's answer first (`unlabeled`), so no ground truth can reach
training or answering; score the returned answers against the originals afterwards.
The update steps are the GRO loops' own (rounds.sft_step / grpo.grpo_loss via train_step), and
they update `exp.state` in place, as the loops do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from si_jax import metrics, sampling, sharding
from si_jax.experiment import Experiment
from si_jax.optimization import grpo, online_rl, rewards, rollout, rounds, train_step
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
class TTRLConfig:
  """Field names follow config.rl (configs/grpo_addition.py), so online_rl.grpo_config and
  online_rl.build_batch read it unchanged; a config.rl section works here as well."""
  num_iterations: int = 20  # Rollout + update iterations.
  prompts_per_iteration: int = 16  # Test problems per rollout (cycling over the test set).
  group_size: int = 8  # Samples per problem: the vote and the GRPO group (G).
  max_new_tokens: int = 10  # Completion budget.
  temperature: float = 1.0  # Sampling temperature of rollouts.
  min_share: float = 0.0  # Majorities weaker than this give no reward (all 0).
  advantage_estimator: str = 'grpo'  # 'grpo' or 'rloo'.
  std_scale: str = 'group'  # 'group', 'batch' or 'none'.
  beta: float = 0.0  # KL coefficient β to the pre-adaptation model (> 0 scores a frozen copy).
  kl_estimator: str = 'k3'
  eps_low: float = 0.2  # Clip ε below 1.
  eps_high: float = 0.2  # Clip ε above 1.
  aggregation: str = 'token_mean'
  epochs: int = 1  # GRPO updates per rollout (μ).
  mask_overlong: bool = False
  dynamic_sampling: bool = False  # Mask groups whose rewards are all equal.


@dataclasses.dataclass(frozen=True)
class Adapted:
  """selection: the answers after adaptation (its samples / tokens: answering only).
  history: per round / iteration, label-free metrics. samples, generated_tokens: sampled while
  adapting; updates: optimizer steps taken."""
  selection: voting.Selection
  history: list[dict]
  samples: int
  generated_tokens: int
  updates: int


def unlabeled(problems: Sequence[Problem]) -> list[Problem]:
  """The problems with their answers removed: what test-time training may see."""
  return [Problem(prompt=p.prompt, answer='', difficulty=p.difficulty) for p in problems]


def _answer(exp: Experiment, sampler, problems, n: int, temperature: float, max_new_tokens: int,
            seed: int) -> voting.Selection:
  strategy = sampling.Greedy() if n == 1 else sampling.Temperature(temperature)
  return voting.self_consistency_answer(sampler, exp.state.params, exp.tokenizer, exp.task,
                                        problems, n=n, strategy=strategy,
                                        max_new_tokens=max_new_tokens, seed=seed)


def _fits(exp: Experiment, prompt: str, completion: str) -> bool:
  tok = exp.tokenizer
  return len(tok.encode(prompt, bos=True)) + len(tok.encode(completion, eos=True)) <= (
      exp.config.data.seq_len)


def sft(exp: Experiment, problems: Sequence[Problem], cfg: SFTConfig = SFTConfig(), *,
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
    ro = rollout.rollout(sampler, exp.state.params, exp.tokenizer, problems,
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
      step_before = int(exp.state.step)
      logged.update(rounds.train_sft(exp, step_fn, prompts, targets, num_steps=cfg.sft_steps,
                                     batch_size=cfg.batch_size, seed=seed * 7919 + r,
                                     max_epochs=cfg.max_epochs))
      updates += int(exp.state.step) - step_before
    history.append(logged)
  selection = _answer(exp, sampler, problems, answer_n, cfg.temperature, cfg.max_new_tokens, seed)
  return Adapted(selection, history, samples, tokens, updates)


def ttrl_step(exp: Experiment, cfg: TTRLConfig):
  """The jitted GRPO update TTRL runs (build once, pass to several `ttrl` calls)."""
  return train_step.jit_train_step(train_step.make_train_step(
      functools.partial(grpo.grpo_loss, exp.model, cfg=online_rl.grpo_config(cfg)), exp.tx,
      exp.schedule, exp.config.optimizer.grad_accum_steps), exp.shardings, exp.mesh)


def ttrl(exp: Experiment, problems: Sequence[Problem], cfg: TTRLConfig = TTRLConfig(), *,
         answer_n: int = 8, seed: int = 0, sampler: sampling.Sampler | None = None,
         step_fn=None) -> Adapted:
  """TTRL: GRPO with the majority-vote reward on the test problems, then self-consistency over
  answer_n samples. Each iteration takes the next `prompts_per_iteration` problems of a seeded
  shuffle of the test set (reshuffled every pass)."""
  problems = unlabeled(problems)
  sampler = sampler or sampling.Sampler(exp.model, exp.mesh)
  step_fn = step_fn or ttrl_step(exp, cfg)
  reward_fn = rewards.majority_vote(exp.task, cfg.group_size, cfg.min_share)
  score = functools.partial(sampling.score_tokens, exp.model)
  ref_params = rounds.frozen_copy(exp.state.params) if cfg.beta > 0 else None
  strategy = sampling.Temperature(cfg.temperature)
  rng = np.random.default_rng([seed, 11])
  order = np.array([], np.int64)
  state, history, samples, tokens = exp.state, [], 0, 0
  for it in range(cfg.num_iterations):
    while len(order) < cfg.prompts_per_iteration:
      order = np.concatenate([order, rng.permutation(len(problems))])
    chunk, order = order[:cfg.prompts_per_iteration], order[cfg.prompts_per_iteration:]
    ro = rollout.rollout(sampler, state.params, exp.tokenizer, [problems[i] for i in chunk],
                         group_size=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                         strategy=strategy, seed=seed * 1_000_003 + it * len(chunk))
    samples += len(ro.completions)
    tokens += int(ro.arrays['completion_mask'].sum())
    reward = reward_fn(ro.prompts, ro.completions)  # No `answers`: the vote is the label.
    batch, host = online_rl.build_batch(ro, reward, cfg)
    args = (batch['prompt'], batch['prompt_mask'], batch['completion'], batch['completion_mask'])
    if ref_params is not None:
      batch['ref_logprobs'] = np.asarray(score(ref_params, *args)[0])
    if cfg.epochs > 1:  # pi_old: the policy that sampled, scored once per rollout.
      batch['old_logprobs'] = np.asarray(score(state.params, *args)[0])
    device_batch = sharding.shard_batch(batch, exp.mesh)
    for _ in range(cfg.epochs):
      state, step_metrics = step_fn(state, device_batch)
    exp.state = state  # The step donated the old state: keep exp pointing at live buffers.
    _, shares = rewards.majority_labels(exp.task, ro.completions, cfg.group_size)
    history.append({'iteration': it + 1, 'majority_share': float(shares.mean()), **host,
                    **metrics.to_python(step_metrics)})
  selection = _answer(exp, sampler, problems, answer_n, cfg.temperature, cfg.max_new_tokens, seed)
  return Adapted(selection, history, samples, tokens, cfg.num_iterations * cfg.epochs)

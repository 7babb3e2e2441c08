"""The GRPO update of a rollout, shared by online RL (online_rl.py) and TTRL (refinement/adaptation.py).

One iteration of either loop is: `collect` a rollout and its rewards (DAPO's soft overlong
punishment and dynamic sampling happen here) -> `update` (advantages, masks, optional reference
/ old-policy scoring, `epochs` jitted steps of grpo.grpo_loss built by `make_step`). `RLConfig`
is config.rl, typed and checked once; the objective's own fields are its `loss`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
from absl import logging

from si_jax import metrics, sampling, sharding
from si_jax.optimization import grpo, rollout, train_step


@dataclasses.dataclass(frozen=True)
class RLConfig:
  """config.rl (configs/grpo_addition.py documents each field); build with `from_config`."""
  num_iterations: int = 40  # Rollout + update iterations.
  prompts_per_iteration: int = 16  # Groups per update.
  group_size: int = 8  # Samples per problem (G).
  max_new_tokens: int = 8  # Completion budget (L_max).
  temperature: float = 1.0  # Sampling temperature of rollouts.
  reward: str = 'verifiable'  # A name in rewards.REWARDS.
  advantage_estimator: str = 'grpo'  # A name in grpo.ADVANTAGE_ESTIMATORS.
  std_scale: str = 'group'  # grpo.STD_SCALES.
  beta: float = 0.0  # KL coefficient β to the frozen reference.
  kl_estimator: str = 'k3'  # 'k1' or 'k3'.
  eps_low: float = 0.2  # Clip ε below 1.
  eps_high: float = 0.2  # Clip ε above 1.
  aggregation: str = 'seq_mean_token_mean'  # grpo.AGGREGATIONS.
  epochs: int = 1  # Updates per rollout (μ).
  mask_overlong: bool = False  # No loss on completions cut at max_new_tokens.
  overlong_buffer: int = 0  # DAPO's L_cache: soft overlong punishment over the last tokens.
  dynamic_sampling: bool = False  # DAPO: refill the batch with groups of unequal rewards.
  max_sample_batches: int = 16  # Bound on problems drawn per update, in prompts_per_iteration.
  eval_every: int = 10  # Held-out evaluation period (iterations; online RL only).
  eval_samples: int = 4  # Samples per held-out problem (online RL only).
  checkpoint_every: int = 10  # Checkpoint period (iterations; online RL only).

  def __post_init__(self):
    if self.advantage_estimator not in grpo.ADVANTAGE_ESTIMATORS:
      raise ValueError(f'config.rl.advantage_estimator={self.advantage_estimator!r} not in '
                       f'{sorted(grpo.ADVANTAGE_ESTIMATORS)}')
    if self.std_scale not in grpo.STD_SCALES:
      raise ValueError(f'config.rl.std_scale={self.std_scale!r} not in {grpo.STD_SCALES}')
    if self.epochs < 1:
      raise ValueError(f'config.rl.epochs={self.epochs}: at least one update per rollout')
    if not 0 <= self.overlong_buffer <= self.max_new_tokens:
      raise ValueError(f'config.rl.overlong_buffer={self.overlong_buffer} must lie in [0, '
                       f'config.rl.max_new_tokens={self.max_new_tokens}]; 0 turns it off')
    if self.max_sample_batches < 1:
      raise ValueError(f'config.rl.max_sample_batches={self.max_sample_batches} must be >= 1')
    _ = self.loss  # Checks the objective's fields.

  @classmethod
  def from_config(cls, section, **overrides):
    """From a config.rl section (ConfigDict or dict); unknown keys are refused by name."""
    values = {**dict(section), **overrides}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f'config.rl has unknown keys {unknown}; known: {sorted(known)}')
    return cls(**values)

  @property
  def loss(self) -> grpo.GRPOConfig:
    return grpo.GRPOConfig(beta=self.beta, kl_estimator=self.kl_estimator,
                           eps_low=self.eps_low, eps_high=self.eps_high,
                           aggregation=self.aggregation, max_completion_len=self.max_new_tokens)


def make_step(exp, rl: RLConfig):
  """The jitted GRPO step `(state, batch) -> (state, metrics)` (build once per run)."""
  return train_step.jit_train_step(train_step.make_train_step(
      functools.partial(grpo.grpo_loss, exp.model, cfg=rl.loss), exp.tx, exp.schedule,
      exp.config.optimizer.grad_accum_steps), exp.shardings, exp.mesh)


def _check_finite(reward: np.ndarray, rl: RLConfig):
  if not np.all(np.isfinite(reward)):
    bad = np.flatnonzero(~np.isfinite(reward))
    raise ValueError(f'config.rl.reward={rl.reward!r} returned {bad.size} non-finite rewards '
                     f'(NaN/inf, e.g. sample {bad[0]}): advantages would be NaN and so would every '
                     f'parameter. Make the reward function return finite numbers (clip it or map '
                     f'failures to 0)')


def shaped_reward(ro: rollout.Rollout, reward: np.ndarray, rl: RLConfig) -> np.ndarray:
  """The reward plus DAPO's soft overlong punishment (when config.rl.overlong_buffer > 0)."""
  reward = np.asarray(reward, np.float32)
  _check_finite(reward, rl)
  if rl.overlong_buffer:
    lengths = ro.arrays['completion_mask'].sum(1)
    reward = reward + grpo.soft_overlong_punishment(lengths, rl.max_new_tokens,
                                                    rl.overlong_buffer)
  return reward


def collect(draw: Callable[[int, int], tuple[rollout.Rollout, np.ndarray]],
            rl: RLConfig) -> tuple[rollout.Rollout, np.ndarray, dict]:
  """(rollout, shaped rewards, host metrics) for one update of `prompts_per_iteration` groups.

  `draw(attempt, batches)` samples a group for each of `batches * prompts_per_iteration` fresh
  problems (attempt 0, 1, ...) and returns them with their rewards. Without dynamic sampling
  that is one batch. With it (DAPO, Algorithm 1) only groups whose rewards differ are kept, and
  draws go on until they fill the whole update: no group without an advantage takes a slot.
  Each draw after the first is sized by the share of informative groups seen so far, so a
  refill is usually one more (larger) sampling call. All draws together sample at most
  `max_sample_batches` batches (verl's max_num_gen_batches); if that is not enough, the
  informative groups drawn are repeated to fill the update (a warning), and none at all is an
  error.
  """
  wanted, g = rl.prompts_per_iteration, rl.group_size
  if not rl.dynamic_sampling:
    ro, reward = draw(0, 1)
    return ro, shaped_reward(ro, reward, rl), {}
  kept, kept_rewards, batches, sampled, informative, attempt = [], [], 0, 0, 0, 0
  while informative < wanted and batches < rl.max_sample_batches:
    if not sampled:
      size = 1  # No informative share known yet.
    else:
      rate = (informative + 1) / (sampled + 2)  # Laplace's estimate: never 0, never certain.
      per_batch = max(1, int(rate * wanted))  # Informative groups a batch should bring.
      size = min(-(-(wanted - informative) // per_batch), rl.max_sample_batches - batches)
    ro, reward = draw(attempt, size)
    reward = shaped_reward(ro, reward, rl).reshape(-1, g)
    keep = np.flatnonzero(grpo.dynamic_sampling_keep(reward))
    if len(keep):
      kept.append(ro.take_groups(keep))
      kept_rewards.append(reward[keep].reshape(-1))
    batches, attempt = batches + size, attempt + 1
    sampled, informative = sampled + reward.shape[0], informative + len(keep)
  if not informative:
    raise ValueError(f'dynamic sampling: none of the {sampled} groups drawn in {batches} batches '
                     f'(config.rl.max_sample_batches={rl.max_sample_batches}) has rewards that '
                     f'differ, so no group carries an advantage: the task is solved or hopeless '
                     f'for this policy. Raise config.rl.max_sample_batches, make the task '
                     f'easier/harder, or set config.rl.dynamic_sampling=False')
  if informative < wanted:
    logging.warning('dynamic sampling: %d of %d groups with unequal rewards in %d batches '
                    '(config.rl.max_sample_batches); they are repeated to fill the update. Raise '
                    'max_sample_batches, or the task is nearly solved or hopeless for this '
                    'policy.', informative, wanted, batches)
  groups = np.resize(np.arange(informative), wanted)  # The first `wanted`, or repeats.
  ro = rollout.concat(kept).take_groups(groups)
  reward = np.concatenate(kept_rewards).reshape(-1, g)[groups].reshape(-1)
  return ro, reward, {'sample_batches': float(batches), 'sample_calls': float(attempt),
                      'sampled_informative': informative / sampled,
                      'repeated_groups': max(0, wanted - informative) / wanted}


def build_batch(ro: rollout.Rollout, reward: np.ndarray, rl: RLConfig) -> tuple[dict, dict]:
  """Advantages and masks for one rollout; returns (batch, host metrics)."""
  g = ro.group_size
  _check_finite(reward, rl)
  rewards_GxN = reward.reshape(-1, g)
  estimator = grpo.ADVANTAGE_ESTIMATORS[rl.advantage_estimator]
  advantages = np.asarray(estimator(rewards_GxN, rl.std_scale)).reshape(-1)
  mask = ro.arrays['completion_mask']
  if rl.mask_overlong:
    mask = grpo.overlong_mask(mask, ro.finish_reason)
  informative = grpo.dynamic_sampling_keep(rewards_GxN)
  batch = {**ro.arrays, 'completion_mask': mask, 'advantages': advantages.astype(np.float32)}
  host = {'reward_mean': float(reward.mean()), 'reward_std': float(reward.std()),
          'advantage_mean': float(advantages.mean()),
          'advantage_abs': float(np.abs(advantages).mean()),
          'informative_groups': float(informative.mean()), 'tokens': float(mask.sum())}
  return batch, host


def update(exp, step_fn, state, ro: rollout.Rollout, reward: np.ndarray, rl: RLConfig,
           ref_params=None):
  """`rl.epochs` GRPO steps on one rollout: (state, metrics). ref_params: the frozen reference
  (needed when rl.beta > 0); pi_old is scored once when epochs > 1."""
  batch, host = build_batch(ro, reward, rl)
  score = functools.partial(sampling.score_tokens, exp.model)
  args = (batch['prompt'], batch['prompt_mask'], batch['completion'], batch['completion_mask'])
  if rl.beta > 0:
    if ref_params is None:
      raise ValueError('config.rl.beta > 0 needs the frozen reference params (ref_params)')
    batch['ref_logprobs'] = np.asarray(score(ref_params, *args)[0])
  if rl.epochs > 1:  # pi_old: the policy that sampled, scored exactly once per rollout.
    batch['old_logprobs'] = np.asarray(score(state.params, *args)[0])
  device_batch = sharding.shard_batch(batch, exp.mesh)
  for _ in range(rl.epochs):
    state, step_metrics = step_fn(state, device_batch)
  return state, {**metrics.to_python(step_metrics), **host}

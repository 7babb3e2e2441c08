"""GRPO and its variants: the policy-gradient objective of online RL (survey §4, Optimization).

Everything a researcher changes to try a GRPO variant is in this file:
  * advantage estimators (registered by name): 'grpo' (Shao et al. 2024: group-normalised
    rewards, with the std taken over the group, the batch, or not at all as in Dr. GRPO) and
    'rloo' (leave-one-out baseline);
  * KL estimators to the frozen reference: 'k1' (log-ratio) and 'k3' (Schulman's unbiased,
    always >= 0, as in GRPO's Eq. 4);
  * the clipped surrogate with separate low/high epsilon (DAPO's clip-higher);
  * loss aggregation: 'seq_mean_token_mean' (GRPO's Eq. 3: each completion's token mean, then
    the mean over completions), 'token_mean' (DAPO's token-level loss: one mean over all tokens
    of the batch) and 'seq_mean_token_sum_norm' (Dr. GRPO: token sums over a constant, the
    batch's completions times the generation budget, so no length bias);
  * DAPO's host-side helpers: the dynamic-sampling test, overlong masking and the soft overlong
    punishment.

Notation (per completion token t of sample i): ratio r = pi_theta / pi_old,
A_i the sequence advantage, eps_low / eps_high the clip range, beta the KL coefficient:
  L_it = -min(r A_i, clip(r, 1 - eps_low, 1 + eps_high) A_i) + beta * KL_it.

Which `config.rl` flags make which algorithm (`ALGORITHMS`; pick one with
`--config=configs/grpo_addition.py:<name>`; unlisted flags keep their defaults):

  | algorithm | advantage_estimator | std_scale | aggregation             | eps_high | dynamic_sampling | overlong_buffer |
  |-----------|---------------------|-----------|-------------------------|----------|------------------|-----------------|
  | grpo      | grpo                | group     | seq_mean_token_mean     | 0.2      | False            | 0               |
  | dr_grpo   | grpo                | none      | seq_mean_token_sum_norm | 0.2      | False            | 0               |
  | dapo      | grpo                | group     | token_mean              | 0.28     | True             | 2 (L_cache)     |
  | rloo      | rloo                | none      | seq_mean_token_sum_norm | 0.2      | False            | 0               |

GRPO and Dr. GRPO keep beta (the KL to the reference) as configured; DAPO and RLOO as defined
use none (beta=0). RLOO is REINFORCE on whole-sequence log-probabilities: its token sums over a
constant are Dr. GRPO's aggregation, and with one epoch per rollout the ratio is 1, so clipping
never acts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from si_jax import models
from si_jax.sampling.scoring import completion_logprobs

# --- Advantage estimators (host or device: plain array math) -----------------------------------

ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}
STD_SCALES = ('group', 'batch', 'none')


def register_advantage_estimator(name: str):
  def register(fn):
    ADVANTAGE_ESTIMATORS[name] = fn
    return fn
  return register


@register_advantage_estimator('grpo')
def grpo_advantages(rewards_GxN, std_scale: str = 'group', eps: float = 1e-6):
  """A_i = (r_i - mean(group)) / std, std over the group ('group'), the whole batch ('batch'),
  or 1 ('none': Dr. GRPO, which argues the std division biases toward easy/hard groups)."""
  r = jnp.asarray(rewards_GxN, jnp.float32)
  centred = r - r.mean(axis=1, keepdims=True)
  if std_scale == 'group':
    return centred / (r.std(axis=1, keepdims=True) + eps)
  if std_scale == 'batch':
    return centred / (r.std() + eps)
  if std_scale == 'none':
    return centred
  raise ValueError(f'config.rl.std_scale={std_scale!r} not in {STD_SCALES}')


@register_advantage_estimator('rloo')
def rloo_advantages(rewards_GxN, std_scale: str = 'none', eps: float = 1e-6):
  """REINFORCE leave-one-out (Ahmadian et al. 2024): A_i = r_i - mean_{j != i} r_j."""
  del std_scale, eps
  r = jnp.asarray(rewards_GxN, jnp.float32)
  n = r.shape[1]
  if n < 2:
    raise ValueError('rloo needs at least 2 samples per group (config.rl.group_size)')
  return (r - r.mean(axis=1, keepdims=True)) * n / (n - 1)


# --- KL estimators --------------------------------------------------------------------------

KL_ESTIMATORS: dict[str, Callable] = {
    'k1': lambda logp, ref_logp: logp - ref_logp,
    'k3': lambda logp, ref_logp: jnp.exp(ref_logp - logp) - (ref_logp - logp) - 1.0,
}

AGGREGATIONS = ('seq_mean_token_mean', 'token_mean', 'seq_mean_token_sum_norm')

# The flags of config.rl that define each algorithm of the table in the module docstring.
ALGORITHMS: dict[str, dict] = {
    'grpo': dict(advantage_estimator='grpo', std_scale='group', aggregation='seq_mean_token_mean',
                 eps_high=0.2, dynamic_sampling=False, overlong_buffer=0),
    'dr_grpo': dict(advantage_estimator='grpo', std_scale='none',
                    aggregation='seq_mean_token_sum_norm', eps_high=0.2, dynamic_sampling=False,
                    overlong_buffer=0),
    'dapo': dict(advantage_estimator='grpo', std_scale='group', aggregation='token_mean',
                 eps_high=0.28, dynamic_sampling=True, overlong_buffer=2, beta=0.0),
    'rloo': dict(advantage_estimator='rloo', std_scale='none',
                 aggregation='seq_mean_token_sum_norm', eps_high=0.2, dynamic_sampling=False,
                 overlong_buffer=0, beta=0.0),
}


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  beta: float = 0.0  # KL coefficient (β in GRPO Eq. 3). 0: no reference model pass at all.
  kl_estimator: str = 'k3'  # 'k1' or 'k3'.
  eps_low: float = 0.2  # Clip range below 1 (ε).
  eps_high: float = 0.2  # Clip range above 1 (DAPO's clip-higher: e.g. 0.28).
  aggregation: str = 'seq_mean_token_mean'  # See AGGREGATIONS; GRPO's is the default.
  max_completion_len: int = 64  # Dr. GRPO's constant normaliser for 'seq_mean_token_sum_norm'.

  def __post_init__(self):
    if self.kl_estimator not in KL_ESTIMATORS:
      raise ValueError(f'config.rl.kl_estimator={self.kl_estimator!r} not in '
                       f'{tuple(KL_ESTIMATORS)}')
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f'config.rl.aggregation={self.aggregation!r} not in {AGGREGATIONS}')
    if self.beta < 0 or self.eps_low < 0 or self.eps_high < 0:
      raise ValueError('config.rl.beta, eps_low and eps_high must be >= 0')


def per_token_loss(logp, old_logp, advantages_B, cfg: GRPOConfig, ref_logp=None):
  """(loss [B, N], clipped [B, N] bool, kl [B, N]) before masking and aggregation."""
  ratio = jnp.exp(logp - old_logp)
  adv = advantages_B[:, None]
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high) * adv
  loss = -jnp.minimum(unclipped, clipped)
  kl = jnp.zeros_like(logp)
  if cfg.beta > 0:
    kl = KL_ESTIMATORS[cfg.kl_estimator](logp, ref_logp)
    loss = loss + cfg.beta * kl
  return loss, clipped < unclipped, kl


def aggregate(values_BxN, mask_BxN, cfg: GRPOConfig):
  """(sum, weight) so that sum / weight is the aggregated loss, exact under accumulation."""
  m = mask_BxN.astype(jnp.float32)
  total = values_BxN * m
  if cfg.aggregation == 'token_mean':
    return total.sum(), m.sum()
  if cfg.aggregation == 'seq_mean_token_mean':
    return (total.sum(1) / jnp.maximum(m.sum(1), 1.0)).sum(), jnp.float32(m.shape[0])
  return total.sum() / cfg.max_completion_len, jnp.float32(m.shape[0])


def grpo_loss(model: models.Model, params, batch, cfg: GRPOConfig):
  """The GRPO objective on a rollout batch, in the shared (loss_sum, (weight, metrics)) form.

  batch: prompt [B, P] left-padded + prompt_mask; completion [B, N] + completion_mask (already
  excluding overlong completions if masked); advantages [B]; old_logprobs [B, N] (omit for a
  single optimisation epoch: then pi_old = stop_gradient(pi_theta) and the ratio is exactly 1);
  ref_logprobs [B, N] (only when beta > 0).
  """
  logp, entropy = completion_logprobs(model, params, batch['prompt'], batch['prompt_mask'],
                                      batch['completion'], batch['completion_mask'])
  old = batch['old_logprobs'] if 'old_logprobs' in batch else jax.lax.stop_gradient(logp)
  loss, clipped, kl = per_token_loss(logp, old, batch['advantages'], cfg,
                                     batch.get('ref_logprobs'))
  mask = batch['completion_mask']
  loss_sum, weight = aggregate(loss, mask, cfg)
  # Metrics as (sum, weight)-consistent sums: the step divides them by `weight`.
  token_frac = weight / jnp.maximum(mask.sum(), 1.0)
  masked = lambda x: (x * mask).sum() * token_frac
  return loss_sum, (weight, {'kl': masked(kl), 'clip_fraction': masked(clipped),
                             'entropy': masked(jax.lax.stop_gradient(entropy)),
                             'ratio': masked(jnp.exp(logp - old))})


# --- Host-side helpers for the rollout loop ---------------------------------------------------


def dynamic_sampling_keep(rewards_GxN: np.ndarray) -> np.ndarray:
  """DAPO: keep groups whose rewards are not all equal (they give zero advantage anyway)."""
  r = np.asarray(rewards_GxN)
  return ~np.all(r == r[:, :1], axis=1)


def soft_overlong_punishment(lengths: np.ndarray, max_len: int, buffer: int) -> np.ndarray:
  """DAPO's Eq. 13: 0 up to max_len - buffer tokens, then a linear penalty reaching -1 at
  max_len (a completion cut at the budget has length max_len, so it gets the full -1)."""
  if not 0 < buffer <= max_len:
    raise ValueError(f'config.rl.overlong_buffer={buffer} must lie in (0, '
                     f'config.rl.max_new_tokens={max_len}]; 0 turns the penalty off')
  excess = np.asarray(lengths, np.float32) - (max_len - buffer)
  return -np.clip(excess / buffer, 0.0, 1.0)


def overlong_mask(completion_mask: np.ndarray, finish_reason: np.ndarray,
                  length_reason: int = 3) -> np.ndarray:
  """DAPO's overlong filtering: completions cut at max length contribute no loss."""
  return completion_mask & (np.asarray(finish_reason) != length_reason)[:, None]

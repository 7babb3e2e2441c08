"""Preference objectives: DPO and its family, and SPIN's self-play loss (survey §4).

Each loss is a pure function of per-pair sequence log-probabilities, registered by name, so a
researcher adds a variant in one place. Symbols: pi_w / pi_l the policy's summed log-probs of
the chosen (winning) and rejected (losing) completions, ref_w / ref_l the frozen reference's,
|y_w| / |y_l| their lengths, beta the inverse temperature.
  h = (pi_w - ref_w) - (pi_l - ref_l)          (the implicit reward margin)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from si_jax import models
from si_jax.sampling.scoring import completion_logprobs

PREFERENCE_LOSSES: dict[str, Callable] = {}


def register_preference_loss(name: str):
  def register(fn):
    PREFERENCE_LOSSES[name] = fn
    return fn
  return register


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
  loss: str = 'dpo'  # A key of PREFERENCE_LOSSES: 'dpo', 'ipo', 'simpo', 'spin'.
  beta: float = 0.1  # β: inverse temperature of the implicit reward.
  label_smoothing: float = 0.0  # ε of conservative DPO: the label is flipped with prob. ε.
  simpo_gamma: float = 0.5  # γ: SimPO's target reward margin.
  # α of Iterative RPO (Pang et al. 2024, 2404.19733, Eq. 1): + α * the chosen completion's
  # per-token NLL. 0 is the papers' pure loss; > 0 keeps the chosen answer's likelihood from
  # falling with the rejected one's (what pure DPO / SPIN do to a small model here).
  nll_weight: float = 0.0

  def __post_init__(self):
    if self.loss not in PREFERENCE_LOSSES:
      raise ValueError(f'preference loss={self.loss!r} not in {sorted(PREFERENCE_LOSSES)}')
    if self.beta <= 0 or not 0 <= self.label_smoothing < 0.5 or self.nll_weight < 0:
      raise ValueError('preference beta must be > 0, label_smoothing in [0, 0.5) and '
                       'nll_weight >= 0')

  @property
  def needs_reference(self) -> bool:
    return self.loss != 'simpo'


@register_preference_loss('dpo')
def dpo_loss(pi_w, pi_l, ref_w, ref_l, len_w, len_l, cfg: PreferenceConfig):
  """Rafailov et al. 2023, Eq. 7; with ε > 0 the conservative (label-smoothed) form:
  L = -(1 - ε) log σ(β h) - ε log σ(-β h)."""
  del len_w, len_l
  logits = cfg.beta * ((pi_w - ref_w) - (pi_l - ref_l))
  return (-(1 - cfg.label_smoothing) * jax.nn.log_sigmoid(logits)
          - cfg.label_smoothing * jax.nn.log_sigmoid(-logits))


@register_preference_loss('ipo')
def ipo_loss(pi_w, pi_l, ref_w, ref_l, len_w, len_l, cfg: PreferenceConfig):
  """Azar et al. 2023, Eq. 17: L = (h - 1 / (2β))^2 — regresses the margin, never saturates."""
  del len_w, len_l
  h = (pi_w - ref_w) - (pi_l - ref_l)
  return (h - 1.0 / (2.0 * cfg.beta)) ** 2


@register_preference_loss('simpo')
def simpo_loss(pi_w, pi_l, ref_w, ref_l, len_w, len_l, cfg: PreferenceConfig):
  """Meng et al. 2024, Eq. 6 (reference-free, length-normalised):
  L = -log σ(β pi_w / |y_w| - β pi_l / |y_l| - γ)."""
  del ref_w, ref_l
  logits = cfg.beta * (pi_w / jnp.maximum(len_w, 1) - pi_l / jnp.maximum(len_l, 1))
  return -jax.nn.log_sigmoid(logits - cfg.simpo_gamma)


@register_preference_loss('spin')
def spin_loss(pi_w, pi_l, ref_w, ref_l, len_w, len_l, cfg: PreferenceConfig):
  """Chen et al. 2024, Eq. 4.7 with the logistic loss ℓ(t) = log(1 + e^{-t}):
  L = ℓ(β (pi(y_ref) - ref(y_ref)) - β (pi(y_self) - ref(y_self))), where the chosen completion is
  the human/reference answer, the rejected one the previous iteration's own answer, and the
  reference model is that previous iteration. Same algebra as DPO: a separate name so configs
  and logs say which game is being played."""
  del len_w, len_l
  return -jax.nn.log_sigmoid(cfg.beta * ((pi_w - ref_w) - (pi_l - ref_l)))


def sequence_logprobs(model: models.Model, params, batch, prefix: str):
  """Summed completion log-probs of batch[prefix + '_completion'] after batch['prompt']."""
  logp, _ = completion_logprobs(model, params, batch['prompt'], batch['prompt_mask'],
                                batch[f'{prefix}_completion'], batch[f'{prefix}_mask'])
  return logp.sum(axis=1)


def preference_loss(model: models.Model, params, batch, cfg: PreferenceConfig):
  """Pairs in the shared (loss_sum, (weight, metrics)) form: weight = number of pairs.

  batch: prompt / prompt_mask [B, P]; chosen_completion / chosen_mask and rejected_completion /
  rejected_mask [B, N]; ref_chosen / ref_rejected [B] summed reference log-probs (omitted for
  reference-free losses).
  """
  pi_w = sequence_logprobs(model, params, batch, 'chosen')
  pi_l = sequence_logprobs(model, params, batch, 'rejected')
  zeros = jnp.zeros_like(pi_w)
  ref_w, ref_l = batch.get('ref_chosen', zeros), batch.get('ref_rejected', zeros)
  len_w = batch['chosen_mask'].sum(axis=1).astype(jnp.float32)
  len_l = batch['rejected_mask'].sum(axis=1).astype(jnp.float32)
  losses = PREFERENCE_LOSSES[cfg.loss](pi_w, pi_l, ref_w, ref_l, len_w, len_l, cfg)
  chosen_nll = -pi_w / jnp.maximum(len_w, 1.0)
  if cfg.nll_weight:
    losses = losses + cfg.nll_weight * chosen_nll
  margin = jax.lax.stop_gradient((pi_w - ref_w) - (pi_l - ref_l))
  return losses.sum(), (jnp.float32(losses.shape[0]), {
      'margin': margin.sum(), 'accuracy': (margin > 0).astype(jnp.float32).sum(),
      'chosen_reward': cfg.beta * jax.lax.stop_gradient(pi_w - ref_w).sum(),
      'rejected_reward': cfg.beta * jax.lax.stop_gradient(pi_l - ref_l).sum(),
      'chosen_nll': jax.lax.stop_gradient(chosen_nll).sum()})

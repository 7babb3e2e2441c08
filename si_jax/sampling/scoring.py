"""Scoring: per-token log-probabilities (and entropies) of given completions under given params.

Used for reference-model logprobs (KL terms), DPO, and data selection. The prompt is left-padded
and the completion right-padded, exactly as the sampler lays them out, so a sampled row's
`SampleOutput.logprobs` equals its score here (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from si_jax import models
from si_jax import layout


def completion_logprobs(model: models.Model, params, prompt_BxP, prompt_mask_BxP, completion_BxN,
                        completion_mask_BxN):
  """(logprobs [B, N], entropies [B, N]) of each completion token; 0 where the mask is 0.

  Pure and differentiable: the policy-gradient and preference losses call it inside their steps.
  """
  p = prompt_BxP.shape[1]
  tokens = jnp.concatenate([prompt_BxP, completion_BxN], axis=1)
  mask = jnp.concatenate([prompt_mask_BxP, completion_mask_BxN], axis=1)
  positions = layout.positions(mask)
  logits = models.forward(model, params, tokens[:, :-1], mask[:, :-1].astype(jnp.int32),
                          positions[:, :-1])[:, p - 1:]  # logits predicting the completion.
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logp_all, completion_BxN[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  m = completion_mask_BxN.astype(jnp.float32)
  return logp * m, entropy * m


score_tokens = jax.jit(completion_logprobs, static_argnums=0)


def score(model: models.Model, params, prompts: Sequence[Sequence[int]],
          completions: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Host helper: token-id lists in; (logprobs [B, N], entropies [B, N], mask [B, N]) out."""
  prompt, prompt_mask, completion, completion_mask = layout.prompt_completion(prompts, completions)
  logp, entropy = score_tokens(model, params, prompt, prompt_mask, completion, completion_mask)
  width = max(len(c) for c in completions)
  return (np.asarray(logp)[:, :width], np.asarray(entropy)[:, :width],
          completion_mask[:, :width])

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
from si_jax.sampling.sampler import bucket, left_pad


def completion_logprobs(model: models.Model, params, prompt_BxP, prompt_mask_BxP, completion_BxN,
                        completion_mask_BxN):
  """(logprobs [B, N], entropies [B, N]) of each completion token; 0 where the mask is 0.

  Pure and differentiable: the policy-gradient and preference losses call it inside their steps.
  """
  p = prompt_BxP.shape[1]
  tokens = jnp.concatenate([prompt_BxP, completion_BxN], axis=1)
  mask = jnp.concatenate([prompt_mask_BxP, completion_mask_BxN], axis=1)
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0).astype(jnp.int32)
  logits = models.forward(model, params, tokens[:, :-1], mask[:, :-1].astype(jnp.int32),
                          positions[:, :-1])[:, p - 1:]  # logits predicting the completion.
  logp_all = jax.nn.log_softmax(logits, axis=-1)
  logp = jnp.take_along_axis(logp_all, completion_BxN[..., None], axis=-1)[..., 0]
  entropy = -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)
  m = completion_mask_BxN.astype(jnp.float32)
  return logp * m, entropy * m


score_tokens = jax.jit(completion_logprobs, static_argnums=0)


def layout(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]):
  """(prompt [B, P], prompt_mask, completion [B, N], completion_mask): token-id lists in the
  scoring layout, prompts left-padded and completions right-padded to bucketed widths."""
  if len(prompts) != len(completions) or not prompts:
    raise ValueError(f'score: need as many prompts ({len(prompts)}) as completions '
                     f'({len(completions)}), at least one')
  prompt, prompt_mask = left_pad(prompts, bucket(max(len(p) for p in prompts)))
  n = bucket(max(len(c) for c in completions), minimum=1)
  completion = np.zeros((len(completions), n), np.int32)
  completion_mask = np.zeros((len(completions), n), bool)
  for i, c in enumerate(completions):
    completion[i, :len(c)], completion_mask[i, :len(c)] = c, True
  return prompt, prompt_mask, completion, completion_mask


def score(model: models.Model, params, prompts: Sequence[Sequence[int]],
          completions: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Host helper: token-id lists in; (logprobs [B, N], entropies [B, N], mask [B, N]) out."""
  prompt, prompt_mask, completion, completion_mask = layout(prompts, completions)
  logp, entropy = score_tokens(model, params, prompt, prompt_mask, completion, completion_mask)
  width = max(len(c) for c in completions)
  return (np.asarray(logp)[:, :width], np.asarray(entropy)[:, :width],
          completion_mask[:, :width])

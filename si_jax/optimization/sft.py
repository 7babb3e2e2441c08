"""Supervised fine-tuning: masked next-token cross-entropy over completion tokens only.

A batch is a dict of [B, T] arrays:
  tokens       prompt + completion (+ padding), as produced by si_jax.data;
  loss_mask    1 where the token is a completion token to be predicted, else 0;
  segment_ids  (optional) > 0 per packed sequence, 0 for padding;
  positions    (optional) position of each token within its sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from si_jax import models


def next_token_logits(model: models.Model, params, batch):
  """Logits predicting tokens[:, 1:] from tokens[:, :-1]: [B, T-1, V] float32."""
  seg, pos = batch.get('segment_ids'), batch.get('positions')
  return models.forward(model, params, batch['tokens'][:, :-1],
                        None if seg is None else seg[:, :-1],
                        None if pos is None else pos[:, :-1])


def token_logprobs(model: models.Model, params, batch):
  """log p(tokens[:, t+1] | tokens[:, :t+1]): [B, T-1] float32."""
  logp = jax.nn.log_softmax(next_token_logits(model, params, batch), axis=-1)
  return jnp.take_along_axis(logp, batch['tokens'][:, 1:, None], axis=-1)[..., 0]


def sft_loss(model: models.Model, params, batch):
  """Summed NLL of completion tokens, and their count (the step divides one by the other)."""
  logits = next_token_logits(model, params, batch)
  targets = batch['tokens'][:, 1:]
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], -1)[..., 0]
  weights = batch['loss_mask'][:, 1:].astype(jnp.float32)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return -jnp.sum(logp * weights), (jnp.sum(weights),
                                    {'token_accuracy': jnp.sum(correct * weights)})

"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): a small draft model proposes
k tokens, the target checks them all in one forward pass, and rejection sampling keeps the
output distribution exactly the target's, so fewer target passes buy the same samples.

Layout of one call (batch size 1: every block accepts a different number of tokens, and one
sequence keeps the cache bookkeeping to a scalar index):
  * both models keep a KV cache of every committed token but the last, the *pending* one;
    prompt[:-1] is prefilled left-padded to a bucketed length, so the two caches share slots;
  * draft step (jitted, fixed k): feeds pending, d_1 .. d_k (k + 1 passes), sampling d_i from
    the draft's q_i; d_k is fed too so the draft cache is whole if all k are accepted;
  * verify step (jitted): ONE target pass over [pending, d_1 .. d_k] gives p_0 .. p_k. d_i is
    accepted with prob min(1, p_{i-1}(d_i) / q_i(d_i)); at the first rejection the next token
    is drawn from norm(max(0, p - q)), and if all k pass a bonus token from p_k. Greedy
    (temperature 0): accept while d_i == argmax p_{i-1}; the next token is argmax;
  * rollback: rejected slots stay written but are marked invalid and `index` moves back, so
    the next block overwrites them.
Strategies act on both models' logits (`process`), so the output follows the target's
processed distribution (temperature, top-k, ...).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from si_jax import layout, models
from si_jax.sampling.strategies import Greedy, Strategy


@dataclasses.dataclass(frozen=True)
class DecodeOutput:
  """tokens: generated ids (eos kept, nothing after it); target_passes: target forward passes
  after the prefill; accepted / drafted: draft tokens accepted / proposed (0 / 0 for plain)."""
  tokens: np.ndarray
  target_passes: int
  accepted: int = 0
  drafted: int = 0

  @property
  def acceptance_rate(self) -> float:
    return self.accepted / self.drafted if self.drafted else 0.0

  @property
  def tokens_per_pass(self) -> float:
    return len(self.tokens) / max(self.target_passes, 1)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _prefill(model: models.Model, params, tokens_1xP, cache_len: int):
  """Caches prompt[:-1] (left-padded). Positions count real tokens only."""
  mask_1xP = tokens_1xP >= 0
  cache = models.init_cache(model.cfg, 1, cache_len)
  positions = layout.positions(mask_1xP)
  _, cache = models.forward_with_cache(model, params, jnp.maximum(tokens_1xP, 0), positions,
                                       mask_1xP, cache)
  return cache


def _rollback(cache: models.KVCache, new_index):
  """Keeps slots < new_index; later slots become invalid and will be overwritten."""
  keep_1xS = jnp.arange(cache.max_len)[None, :] < new_index
  return cache.replace(valid_BxS=cache.valid_BxS & keep_1xS, index=new_index)


def _step(model, params, cache, token, position):
  """One token in, its next-token logits [1, V] out."""
  one = jnp.ones((1, 1), jnp.bool_)
  logits, cache = models.forward_with_cache(model, params, token.reshape(1, 1),
                                            position.reshape(1, 1), one, cache)
  return logits[:, -1].astype(jnp.float32), cache


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def _draft(model: models.Model, strategy: Strategy, k: int, params, cache, pending, position,
           key):
  """Feeds pending, d_1 .. d_k; returns (drafts [k], draft probs q [k, V], cache)."""
  def body(carry, i):
    cache, token = carry
    logits_1xV, cache = _step(model, params, cache, token, position + i)
    next_token, _ = strategy.sample(logits_1xV, jax.random.fold_in(key, i)[None])
    q_V = jax.nn.softmax(strategy.process(logits_1xV), axis=-1)[0]
    return (cache, next_token[0]), (next_token[0], q_V)

  (cache, _), (drafts, q) = jax.lax.scan(body, (cache, pending), jnp.arange(k + 1))
  return drafts[:k], q[:k], cache


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnums=(4,))
def _verify(model: models.Model, strategy: Strategy, k: int, params, cache, pending, position,
            drafts_K, q_KxV, key):
  """One target pass over [pending, drafts]: (accepted count, next token, rolled-back cache)."""
  start = cache.index
  tokens_1xT = jnp.concatenate([pending[None], drafts_K])[None]
  positions_1xT = (position + jnp.arange(k + 1, dtype=jnp.int32))[None]
  logits, cache = models.forward_with_cache(model, params, tokens_1xT, positions_1xT,
                                            jnp.ones((1, k + 1), jnp.bool_), cache)
  logits_TxV = logits[0].astype(jnp.float32)
  if strategy.temperature == 0:
    target_T = jnp.argmax(logits_TxV, axis=-1).astype(jnp.int32)
    accept_K = drafts_K == target_T[:k]
    n_accepted = jnp.sum(jnp.cumprod(accept_K.astype(jnp.int32)))
    next_token = target_T[n_accepted]
  else:
    p_TxV = jax.nn.softmax(strategy.process(logits_TxV), axis=-1)
    steps_K = jnp.arange(k)
    p_draft_K, q_draft_K = p_TxV[steps_K, drafts_K], q_KxV[steps_K, drafts_K]
    key_accept, key_next = jax.random.split(key)
    u_K = jax.random.uniform(key_accept, (k,))
    accept_K = u_K * q_draft_K < p_draft_K  # u < p / q without dividing.
    n_accepted = jnp.sum(jnp.cumprod(accept_K.astype(jnp.int32)))
    # q padded with a zero row: after k acceptances the "residual" is p_k itself (the bonus).
    q_TxV = jnp.concatenate([q_KxV, jnp.zeros((1, q_KxV.shape[1]), q_KxV.dtype)])
    p_V = p_TxV[n_accepted]
    residual_V = jnp.maximum(p_V - q_TxV[n_accepted], 0.0)
    # Rejection has probability 0 when p == q; rounding can still land here: use p.
    residual_V = jnp.where(jnp.sum(residual_V) > 0, residual_V, p_V)
    next_token = jax.random.categorical(key_next, jnp.log(residual_V)).astype(jnp.int32)
  return n_accepted, next_token, _rollback(cache, start + n_accepted + 1)


_rollback_jit = jax.jit(_rollback, donate_argnums=(0,))


def _check(prompt: Sequence[int], max_new_tokens: int, k: int):
  if not len(prompt):
    raise ValueError('speculative: the prompt is empty; encode it with bos=True')
  if max_new_tokens < 1 or k < 0:
    raise ValueError(f'speculative: max_new_tokens={max_new_tokens} must be >= 1, k={k} >= 0')


def _prefill_both(prompt, cache_len, *model_params):
  """Caches for each (model, params) pair, plus the pending token and its position."""
  tokens, mask = layout.left_pad([list(prompt[:-1])], layout.bucket(len(prompt)))
  tokens = jnp.asarray(np.where(mask, tokens, -1))
  caches = [_prefill(m, p, tokens, cache_len) for m, p in model_params]
  return caches, jnp.int32(prompt[-1]), len(prompt) - 1


def _finish(tokens: list[int], max_new_tokens: int, eos_id: int) -> np.ndarray:
  tokens = tokens[:max_new_tokens]
  if eos_id in tokens:
    tokens = tokens[:tokens.index(eos_id) + 1]
  return np.asarray(tokens, np.int32)


def speculative_decode(target: models.Model, target_params, draft: models.Model, draft_params,
                       prompt: Sequence[int], *, max_new_tokens: int, k: int = 4,
                       strategy: Strategy = Greedy(), seed: int = 0, eos_id: int = 3
                       ) -> DecodeOutput:
  """Samples one completion of `prompt` (token ids) from the target, drafting k at a time."""
  _check(prompt, max_new_tokens, k)
  cache_len = layout.bucket(len(prompt)) + max_new_tokens + k + 1
  (target_cache, draft_cache), pending, position = _prefill_both(
      prompt, cache_len, (target, target_params), (draft, draft_params))
  out, passes, accepted = [], 0, 0
  base_key = jax.random.PRNGKey(seed)
  while len(out) < max_new_tokens and eos_id not in out:
    key_draft, key_verify = jax.random.split(jax.random.fold_in(base_key, passes))
    drafts, q, draft_cache = _draft(draft, strategy, k, draft_params, draft_cache, pending,
                                    jnp.int32(position), key_draft)
    n_accepted, pending, target_cache = _verify(target, strategy, k, target_params,
                                                target_cache, pending, jnp.int32(position),
                                                drafts, q, key_verify)
    draft_cache = _rollback_jit(draft_cache, target_cache.index)
    n = int(n_accepted)
    out += [int(t) for t in np.asarray(drafts)[:n]] + [int(pending)]
    passes, accepted, position = passes + 1, accepted + n, position + n + 1
  return DecodeOutput(_finish(out, max_new_tokens, eos_id), passes, accepted, passes * k)


def plain_decode(target: models.Model, target_params, prompt: Sequence[int], *,
                 max_new_tokens: int, strategy: Strategy = Greedy(), seed: int = 0,
                 eos_id: int = 3) -> DecodeOutput:
  """The baseline with the same interface and layout: one target pass per token (k = 0)."""
  _check(prompt, max_new_tokens, 0)
  cache_len = layout.bucket(len(prompt)) + max_new_tokens + 1
  (cache,), pending, position = _prefill_both(prompt, cache_len, (target, target_params))
  out, passes = [], 0
  base_key = jax.random.PRNGKey(seed)
  no_drafts = jnp.zeros((0,), jnp.int32)
  no_q = jnp.zeros((0, target.cfg.vocab_size), jnp.float32)
  while len(out) < max_new_tokens and eos_id not in out:
    key = jax.random.split(jax.random.fold_in(base_key, passes))[1]
    _, pending, cache = _verify(target, strategy, 0, target_params, cache, pending,
                                jnp.int32(position), no_drafts, no_q, key)
    out.append(int(pending))
    passes, position = passes + 1, position + 1
  return DecodeOutput(_finish(out, max_new_tokens, eos_id), passes)

"""Sampling with a KV cache: one jitted prefill, then a jitted `lax.while_loop` decode.

Prompts are left-padded to a bucketed length P, so every sequence's next token is written to the
same cache slot; each token's RoPE position counts only its sequence's real tokens, so padding
changes nothing a sequence computes (tests: a batch == each prompt alone).

Cache layout for a call: slots [0, P) hold the prompts, slots [P, P + max_new) the generation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from si_jax import models


def bucket(n: int, minimum: int = 16) -> int:
  """Next power of two >= n (at least `minimum`): a loop of calls compiles a few shapes only."""
  return max(minimum, 1 << max(0, n - 1).bit_length())


@flax.struct.dataclass
class DecodeState:
  cache: models.KVCache
  tokens_BxN: jax.Array  # generated tokens (pad after a sequence is done)
  last_B: jax.Array  # token fed to the next decode step
  position_B: jax.Array  # RoPE position of that token
  done_B: jax.Array
  length_B: jax.Array  # tokens generated so far, eos included
  step: jax.Array


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int = 0):
  """[B, length] left-padded tokens and their mask."""
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  mask = np.zeros((len(prompts), length), bool)
  for i, p in enumerate(prompts):
    if len(p):
      tokens[i, length - len(p):] = p
      mask[i, length - len(p):] = True
  return tokens, mask


@functools.partial(jax.jit, static_argnums=(0, 4, 5), donate_argnums=())
def _greedy(model: models.Model, params, tokens_BxP, mask_BxP, max_new: int, eos_id: int):
  b, p = tokens_BxP.shape
  cache = models.init_cache(model.cfg, b, p + max_new)
  positions_BxP = jnp.maximum(jnp.cumsum(mask_BxP, axis=1) - 1, 0)
  logits, cache = models.forward_with_cache(model, params, tokens_BxP, positions_BxP, mask_BxP,
                                            cache)
  first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
  state = DecodeState(cache=cache, tokens_BxN=jnp.zeros((b, max_new), jnp.int32),
                      last_B=first, position_B=positions_BxP[:, -1] + 1,
                      done_B=jnp.zeros((b,), bool), length_B=jnp.zeros((b,), jnp.int32),
                      step=jnp.zeros((), jnp.int32))

  def cond(s: DecodeState):
    return (s.step < max_new) & ~jnp.all(s.done_B)

  def body(s: DecodeState):
    tok = jnp.where(s.done_B, 0, s.last_B)
    tokens = s.tokens_BxN.at[:, s.step].set(tok)
    length = s.length_B + (~s.done_B).astype(jnp.int32)
    done = s.done_B | (tok == eos_id)
    logits, cache = models.forward_with_cache(model, params, tok[:, None], s.position_B[:, None],
                                              jnp.ones((b, 1), bool), s.cache)
    nxt = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    return DecodeState(cache=cache, tokens_BxN=tokens, last_B=nxt, position_B=s.position_B + 1,
                       done_B=done, length_B=length, step=s.step + 1)

  final = jax.lax.while_loop(cond, body, state)
  return final.tokens_BxN, final.length_B


def greedy_generate(model: models.Model, params, prompts: Sequence[Sequence[int]],
                    max_new_tokens: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Greedy completions of token-id prompts: (tokens [B, max_new_tokens], lengths incl. eos)."""
  if not prompts:
    raise ValueError('greedy_generate: empty prompt list')
  if any(len(p) == 0 for p in prompts):
    raise ValueError('greedy_generate: empty prompt (add a bos token)')
  tokens, mask = left_pad(prompts, bucket(max(len(p) for p in prompts)))
  out, lengths = _greedy(model, params, jnp.asarray(tokens), jnp.asarray(mask),
                         bucket(max_new_tokens), eos_id)
  return np.asarray(out)[:, :max_new_tokens], np.minimum(np.asarray(lengths), max_new_tokens)

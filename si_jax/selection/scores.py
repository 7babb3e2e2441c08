"""Per-example selection scores, registered by name (survey §3: which examples to learn from).

A score maps a list of examples (dicts with 'prompt' and 'completion' strings, plus any fields)
to a numpy array with one row per example. Model scores run one jitted pass per chunk of
`batch_size` examples, padded to bucketed shapes (so a loop of calls compiles a few programs) and,
given a mesh, split over its data axes with `sharding.shard_batch`. Tokens follow the SFT layout:
bos + prompt, then completion + eos; prompts are left-padded, completions right-padded, as in
`si_jax.sampling.scoring`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from si_jax import layout, models, sharding
from si_jax.models import transformer
from si_jax.optimization import rewards
from si_jax.sampling.scoring import completion_logprobs
from si_jax.tokenizers import Tokenizer

Example = Mapping[str, Any]
ScoreFn = Callable[..., np.ndarray]
SCORES: dict[str, ScoreFn] = {}


def register_score(name: str):
  """Decorator: makes `fn(examples, **kwargs) -> np.ndarray` available as SCORES[name]."""
  def wrap(fn: ScoreFn) -> ScoreFn:
    if name in SCORES:
      raise ValueError(f'score {name!r} is already registered')
    SCORES[name] = fn
    return fn
  return wrap


def compute(name: str, examples: Sequence[Example], **kwargs) -> np.ndarray:
  """SCORES[name](examples, **kwargs), naming the known scores when `name` is not one."""
  if name not in SCORES:
    raise KeyError(f'unknown score {name!r}; known: {sorted(SCORES)}')
  return SCORES[name](examples, **kwargs)


# --- Batching ------------------------------------------------------------------------------------


def encode(tokenizer: Tokenizer, examples: Sequence[Example], bare: bool = False):
  """Examples in the scoring layout (`layout.encode_prompt_completion`); bare=True scores each
  completion without its instruction."""
  if not examples:
    raise ValueError('selection scores need at least one example')
  return layout.encode_prompt_completion(tokenizer, [ex['prompt'] for ex in examples],
                                         [ex['completion'] for ex in examples], bare=bare)


def _place_params(params, mesh: Mesh | None):
  """Params already on `mesh` stay as they are; others are replicated onto it."""
  if mesh is None:
    return params
  def put(x):
    s = getattr(x, 'sharding', None)
    if isinstance(s, NamedSharding) and s.mesh == mesh:
      return x
    return jax.device_put(x, sharding.replicated(mesh))
  return jax.tree.map(put, params)


def batched(fn: Callable, arrays: Sequence[np.ndarray], batch_size: int,
            mesh: Mesh | None = None):
  """fn(*chunk) over chunks of `batch_size` rows, gathered into numpy and cut back to N rows.

  The last chunk is filled with copies of the last row (real tokens, so no all-padding row ever
  reaches the model). Without a mesh a small N uses a smaller (bucketed) chunk.
  """
  n = arrays[0].shape[0]
  if mesh is None:
    batch_size = min(batch_size, layout.bucket(n, minimum=1))
  total = -(-n // batch_size) * batch_size
  padded = [np.concatenate([a, np.repeat(a[-1:], total - n, axis=0)]) for a in arrays]
  outs = []
  for start in range(0, total, batch_size):
    chunk = tuple(a[start:start + batch_size] for a in padded)
    if mesh is not None:
      chunk = sharding.shard_batch(chunk, mesh)
    outs.append(jax.device_get(fn(*chunk)))
  return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs)


@functools.partial(jax.jit, static_argnums=0)
def _completion_stats(model: models.Model, params, prompt_BxP, prompt_mask_BxP, completion_BxN,
                      completion_mask_BxN):
  """(mean NLL [B], mean entropy [B]) over each row's completion tokens."""
  logp, entropy = completion_logprobs(model, params, prompt_BxP, prompt_mask_BxP,
                                      completion_BxN, completion_mask_BxN)
  count_B = jnp.maximum(jnp.sum(completion_mask_BxN.astype(jnp.float32), axis=1), 1.0)
  return -jnp.sum(logp, axis=1) / count_B, jnp.sum(entropy, axis=1) / count_B


def _stats(examples, model, params, tokenizer, batch_size, mesh, bare=False):
  arrays = encode(tokenizer, examples, bare=bare)
  fn = functools.partial(_completion_stats, model, _place_params(params, mesh))
  return batched(fn, arrays, batch_size, mesh)


# --- Model scores --------------------------------------------------------------------------------


@register_score('perplexity')
def perplexity(examples, *, model, params, tokenizer, batch_size: int = 32, mesh=None,
               **_) -> np.ndarray:
  """exp(mean NLL of the completion given the prompt): high = surprising to the model."""
  nll, _ = _stats(examples, model, params, tokenizer, batch_size, mesh)
  return np.exp(nll)


@register_score('ifd')
def ifd(examples, *, model, params, tokenizer, batch_size: int = 32, mesh=None,
        **_) -> np.ndarray:
  """Instruction-following difficulty (Li et al. 2024): NLL(answer | prompt) / NLL(answer).

  Near or above 1: the prompt does not help predict the answer (hard or mismatched pair); low:
  the model already follows this instruction.
  """
  conditioned, _ = _stats(examples, model, params, tokenizer, batch_size, mesh)
  alone, _ = _stats(examples, model, params, tokenizer, batch_size, mesh, bare=True)
  return conditioned / np.maximum(alone, 1e-8)


@register_score('entropy')
def entropy(examples, *, model, params, tokenizer, batch_size: int = 32, mesh=None,
            **_) -> np.ndarray:
  """Mean next-token entropy over completion tokens: the model's uncertainty along the answer."""
  _, ent = _stats(examples, model, params, tokenizer, batch_size, mesh)
  return ent


@functools.partial(jax.jit, static_argnums=0)
def _mean_hidden(model: models.Model, params, prompt_BxP, prompt_mask_BxP, completion_BxN,
                 completion_mask_BxN):
  """Final-normed hidden states mean-pooled over real prompt + completion tokens: [B, D]."""
  tokens_BxT = jnp.concatenate([prompt_BxP, completion_BxN], axis=1)
  mask_BxT = jnp.concatenate([prompt_mask_BxP, completion_mask_BxN], axis=1)
  positions_BxT = layout.positions(mask_BxT)
  module = nnx.merge(model.graphdef, params)
  h_BxTxD, _ = module.hidden(tokens_BxT, positions_BxT,
                             transformer.causal_segment_mask(mask_BxT.astype(jnp.int32)))
  m_BxTx1 = mask_BxT.astype(jnp.float32)[..., None]
  return (jnp.sum(h_BxTxD.astype(jnp.float32) * m_BxTx1, axis=1) /
          jnp.maximum(jnp.sum(m_BxTx1, axis=1), 1.0))


@register_score('embedding')
def embedding(examples, *, model, params, tokenizer, batch_size: int = 32, mesh=None,
              **_) -> np.ndarray:
  """[N, D] mean-pooled hidden states, for diversity selection (e.g. k-center)."""
  fn = functools.partial(_mean_hidden, model, _place_params(params, mesh))
  return batched(fn, encode(tokenizer, examples), batch_size, mesh)


def leaf_projection(seed: int, leaf_index: int, size: int, dim: int) -> jax.Array:
  """The fixed Gaussian projection [size, dim] of one parameter leaf (JL-scaled).

  Generated from (seed, leaf index) where it is used, so no full [num_params, dim] matrix is
  ever stored.
  """
  key = jax.random.fold_in(jax.random.PRNGKey(seed), leaf_index)
  return jax.random.normal(key, (size, dim), jnp.float32) / math.sqrt(dim)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _projected_grads(model: models.Model, dim: int, seed: int, params, prompt_BxP,
                     prompt_mask_BxP, completion_BxN, completion_mask_BxN):
  """Per-example gradients of the mean completion NLL, projected to [B, dim]."""
  def loss(p, prompt_P, prompt_mask_P, completion_N, completion_mask_N):
    logp, _ = completion_logprobs(model, p, prompt_P[None], prompt_mask_P[None],
                                  completion_N[None], completion_mask_N[None])
    count = jnp.maximum(jnp.sum(completion_mask_N.astype(jnp.float32)), 1.0)
    return -jnp.sum(logp) / count

  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0, 0))(
      params, prompt_BxP, prompt_mask_BxP, completion_BxN, completion_mask_BxN)
  b = prompt_BxP.shape[0]
  out_BxK = jnp.zeros((b, dim), jnp.float32)
  for i, g in enumerate(jax.tree.leaves(grads)):
    g_BxS = g.reshape(b, -1).astype(jnp.float32)
    out_BxK = out_BxK + g_BxS @ leaf_projection(seed, i, g_BxS.shape[1], dim)
  return out_BxK


def projected_gradients(examples, *, model, params, tokenizer, dim: int = 128, seed: int = 0,
                        batch_size: int = 8, mesh=None) -> np.ndarray:
  """[N, dim] random projections of each example's loss gradient (memory: batch_size x params)."""
  fn = functools.partial(_projected_grads, model, dim, seed, _place_params(params, mesh))
  return batched(fn, encode(tokenizer, examples), batch_size, mesh)


@register_score('gradient_similarity')
def gradient_similarity(examples, *, model, params, tokenizer, target: Sequence[Example],
                        dim: int = 128, seed: int = 0, batch_size: int = 8, mesh=None,
                        **_) -> np.ndarray:
  """LESS (Xia et al. 2024): cosine of each example's projected gradient to the target set's
  mean one, i.e. how much a step on the example would also lower the target loss."""
  kw = dict(model=model, params=params, tokenizer=tokenizer, dim=dim, seed=seed,
            batch_size=batch_size, mesh=mesh)
  g_NxK = projected_gradients(examples, **kw)
  t_K = projected_gradients(target, **kw).mean(axis=0)
  norms = np.linalg.norm(g_NxK, axis=1) * np.linalg.norm(t_K)
  return (g_NxK @ t_K) / np.maximum(norms, 1e-12)


# --- Host scores ---------------------------------------------------------------------------------


@register_score('reward')
def reward(examples, *, reward_fn: rewards.RewardFn, fields: Mapping[str, str] | None = None,
           **_) -> np.ndarray:
  """Any reward callable; `fields` maps its keyword (e.g. 'answers') to an example key."""
  kwargs = {name: [ex[key] for ex in examples] for name, key in (fields or {}).items()}
  return np.asarray(reward_fn([ex['prompt'] for ex in examples],
                              [ex['completion'] for ex in examples], **kwargs), np.float32)


@register_score('learnability')
def learnability(examples, *, successes_key: str = 'successes', attempts_key: str = 'attempts',
                 **_) -> np.ndarray:
  """p(1 - p), p the verified success rate of the example's group: highest at p = 1/2, zero for
  problems the model always or never solves (no learning signal there)."""
  s = np.asarray([ex[successes_key] for ex in examples], np.float32)
  n = np.asarray([ex[attempts_key] for ex in examples], np.float32)
  p = s / np.maximum(n, 1.0)
  return p * (1.0 - p)


@register_score('agreement')
def agreement(examples, *, task, group_size: int, **_) -> np.ndarray:
  """Self-consistency: the majority answer's share of the example's group (consecutive
  `group_size` examples share a prompt, as the sampler lays them out)."""
  _, shares = rewards.majority_labels(task, [ex['completion'] for ex in examples], group_size)
  return np.repeat(shares, group_size)

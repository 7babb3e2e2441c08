"""Per-example selection scores, registered by name (survey §3: which examples to learn from).

A score maps a list of examples (dicts with 'prompt' and 'completion' strings, plus any fields)
to a numpy array with one row per example. Model scores run one jitted pass per chunk of
`batch_size` examples, padded to bucketed shapes (so a loop of calls compiles a few programs) and,
given a mesh, split over its data axes with `sharding.shard_batch`. Tokens follow the SFT layout:
bos + prompt, then completion + eos; prompts are left-padded, completions right-padded, as in
`si_jax.sampling.scoring`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
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
# Old score names, refused with the new one: 'learnability' was the vote share's p(1 - p).
RENAMED = {'learnability': 'uncertainty'}


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
  if name in RENAMED:
    raise KeyError(f'score {name!r} was renamed to {RENAMED[name]!r}')
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
  """Instruction-following difficulty (Li et al. 2024, Cherry LLM): PPL(answer | prompt) /
  PPL(answer), the answer scored after bos alone for the second.

  >= 1: the prompt does not make the answer any easier to predict (an irrelevant or mismatched
  instruction; `selectors.top_ifd` drops these before ranking); high below 1: hard to follow;
  low: the model already follows this instruction.
  """
  conditioned, _ = _stats(examples, model, params, tokenizer, batch_size, mesh)
  alone, _ = _stats(examples, model, params, tokenizer, batch_size, mesh, bare=True)
  return np.exp(conditioned - alone)


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


# --- Gradient scores: LESS ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdamCheckpoint:
  """One checkpoint of a LESS score: params, Adam's moments there, and the checkpoint's weight.

  mu, nu: Adam's first and second moment estimates (trees shaped like params); count: the Adam
  steps taken; learning_rate: eta_i, the mean learning rate of the training the checkpoint closes
  (LESS weights checkpoints by it: later, low-LR checkpoints count less); b1, b2, eps: the
  optimizer's own (config.optimizer), so the direction is the one training would take.
  """
  params: Any
  mu: Any
  nu: Any
  count: Any
  learning_rate: float
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8


def _is_adam(x) -> bool:
  return isinstance(x, optax.ScaleByAdamState)


def adam_checkpoint(params, opt_state, learning_rate: float, *, b1: float = 0.9,
                    b2: float = 0.999, eps: float = 1e-8) -> AdamCheckpoint:
  """The AdamCheckpoint of a train state (its params and the Adam moments inside opt_state, e.g.
  of `optimizers.make_optimizer`'s clip + AdamW chain), copied: train steps donate their state."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_adam) if _is_adam(x)]
  if len(found) != 1:
    raise ValueError(f'LESS needs the Adam moments of the optimizer state, found {len(found)} '
                     'optax ScaleByAdamState in it: train with Adam or AdamW (config.optimizer)')
  if jax.tree.structure(found[0].mu) != jax.tree.structure(params):
    raise ValueError('the Adam moments do not match the params tree: pass the opt_state of the '
                     'same train state as the params')
  params, mu, nu, count = jax.tree.map(jnp.copy, (params, found[0].mu, found[0].nu,
                                                  found[0].count))
  return AdamCheckpoint(params, mu, nu, count, float(learning_rate), b1, b2, eps)


def adam_direction(g, mu, nu, count, b1, b2, eps):
  """Gamma(z, theta) of LESS: the bias-corrected update Adam would make from moments (mu, nu)
  after `count` steps if the next gradient were g (optax.scale_by_adam's, before the -lr)."""
  step = count + 1
  m = (b1 * mu + (1 - b1) * g) / (1 - b1 ** step)
  v = (b2 * nu + (1 - b2) * g * g) / (1 - b2 ** step)
  return m / (jnp.sqrt(v) + eps)


def leaf_projection(seed: int, leaf_index: int, size: int, dim: int) -> jax.Array:
  """The fixed Gaussian projection [size, dim] of one parameter leaf (JL-scaled).

  Generated from (seed, leaf index) where it is used, so no full [num_params, dim] matrix is
  ever stored.
  """
  key = jax.random.fold_in(jax.random.PRNGKey(seed), leaf_index)
  return jax.random.normal(key, (size, dim), jnp.float32) / math.sqrt(dim)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _projected_grads(model: models.Model, dim: int, seed: int, params, adam, prompt_BxP,
                     prompt_mask_BxP, completion_BxN, completion_mask_BxN):
  """Per-example gradients of the mean completion NLL, projected to [B, dim]; with adam =
  (mu, nu, count, b1, b2, eps), each gradient is first turned into Adam's update direction."""
  def loss(p, prompt_P, prompt_mask_P, completion_N, completion_mask_N):
    logp, _ = completion_logprobs(model, p, prompt_P[None], prompt_mask_P[None],
                                  completion_N[None], completion_mask_N[None])
    count = jnp.maximum(jnp.sum(completion_mask_N.astype(jnp.float32)), 1.0)
    return -jnp.sum(logp) / count

  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0, 0))(
      params, prompt_BxP, prompt_mask_BxP, completion_BxN, completion_mask_BxN)
  b = prompt_BxP.shape[0]
  leaves = [g.astype(jnp.float32) for g in jax.tree.leaves(grads)]
  if adam is not None:
    mu, nu, count, b1, b2, eps = adam
    leaves = [adam_direction(g, m[None], v[None], count, b1, b2, eps)
              for g, m, v in zip(leaves, jax.tree.leaves(mu), jax.tree.leaves(nu))]
  out_BxK = jnp.zeros((b, dim), jnp.float32)
  for i, g in enumerate(leaves):
    g_BxS = g.reshape(b, -1)
    out_BxK = out_BxK + g_BxS @ leaf_projection(seed, i, g_BxS.shape[1], dim)
  return out_BxK


def projected_gradients(examples, *, model, params, tokenizer, dim: int = 128, seed: int = 0,
                        batch_size: int = 8, mesh=None,
                        adam: AdamCheckpoint | None = None) -> np.ndarray:
  """[N, dim] random projections of each example's loss gradient, or with `adam` of its Adam
  update direction at that checkpoint (memory: batch_size x params)."""
  moments = None
  if adam is not None:
    moments = _place_params((adam.mu, adam.nu, jnp.asarray(adam.count, jnp.int32),
                             adam.b1, adam.b2, adam.eps), mesh)
  fn = functools.partial(_projected_grads, model, dim, seed, _place_params(params, mesh), moments)
  return batched(fn, encode(tokenizer, examples), batch_size, mesh)


def _cosine(x_NxK, t_K) -> np.ndarray:
  norms = np.linalg.norm(x_NxK, axis=1) * np.linalg.norm(t_K)
  return (x_NxK @ t_K) / np.maximum(norms, 1e-12)


@register_score('gradient_similarity')
def gradient_similarity(examples, *, model, params, tokenizer, target: Sequence[Example],
                        dim: int = 128, seed: int = 0, batch_size: int = 8, mesh=None,
                        **_) -> np.ndarray:
  """Cosine of each example's projected raw gradient to the target set's mean one at one
  checkpoint: LESS's SGD variant, right for SGD-trained models (see `less` for Adam)."""
  kw = dict(model=model, params=params, tokenizer=tokenizer, dim=dim, seed=seed,
            batch_size=batch_size, mesh=mesh)
  return _cosine(projected_gradients(examples, **kw), projected_gradients(target, **kw).mean(0))


@register_score('less')
def less(examples, *, model, tokenizer, target: Sequence[Example],
         checkpoints: Sequence[AdamCheckpoint], dim: int = 128, seed: int = 0,
         batch_size: int = 8, mesh=None, **_) -> np.ndarray:
  """LESS (Xia et al. 2024, Eq. 2 with Adam): sum_i eta_i cos(grad l(D_val; theta_i),
  Gamma(z, theta_i)) / sum_i eta_i, over the checkpoints theta_i.

  An Adam-trained model moves along Gamma, the Adam update direction of the example's gradient
  (`adam_direction`), not along the gradient; the target side is the plain gradient of the target
  set's mean loss, since to first order the target loss falls by lr <grad l(D_val), Gamma>.
  Cosine, not inner product: short sequences have large gradients and would win on norm alone.
  Both sides share one random projection to `dim`. The weights are normalised to sum to 1 (the
  paper's ranking; values stay in [-1, 1]). `params` (from the loop's kwargs) is not read: each
  checkpoint brings its own.
  """
  if not checkpoints:
    raise ValueError('the LESS score needs checkpoints=[scores.adam_checkpoint(...), ...] '
                     '(params and Adam moments of one or more points of training)')
  if not target:
    raise ValueError('the LESS score needs target=[...]: a few examples of the task to select for')
  eta = np.asarray([c.learning_rate for c in checkpoints], np.float64)
  if np.any(eta < 0) or eta.sum() <= 0:
    raise ValueError(f'LESS checkpoint learning rates {eta.tolist()} must be >= 0 with a '
                     'positive sum (they weight the checkpoints)')
  total_N = np.zeros(len(examples))
  for c, weight in zip(checkpoints, eta / eta.sum()):
    kw = dict(model=model, params=c.params, tokenizer=tokenizer, dim=dim, seed=seed,
              batch_size=batch_size, mesh=mesh)
    gamma_NxK = projected_gradients(examples, adam=c, **kw)
    total_N += weight * _cosine(gamma_NxK, projected_gradients(target, **kw).mean(0))
  return total_N


# --- Host scores ---------------------------------------------------------------------------------


@register_score('reward')
def reward(examples, *, reward_fn: rewards.RewardFn, fields: Mapping[str, str] | None = None,
           **_) -> np.ndarray:
  """Any reward callable; `fields` maps its keyword (e.g. 'answers') to an example key."""
  kwargs = {name: [ex[key] for ex in examples] for name, key in (fields or {}).items()}
  return np.asarray(reward_fn([ex['prompt'] for ex in examples],
                              [ex['completion'] for ex in examples], **kwargs), np.float32)


@register_score('uncertainty')
def uncertainty(examples, *, successes_key: str = 'successes', attempts_key: str = 'attempts',
                **_) -> np.ndarray:
  """p(1 - p), p the share of the example's group behind its label (the vote share, or the
  verified success rate where one was counted): the model's uncertainty, highest at p = 1/2 and
  zero for problems it always or never answers one way.

  Not the learnability of Foster & Foerster (2025), which needs verifier success rates: under the
  majority vote p measures agreement, not correctness."""
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

"""A decoder-only transformer LM with the knobs of the Llama / Gemma / Qwen families.

The model is a set of Flax NNX modules, but nothing outside this package holds a module: callers
split it once into a static graphdef and a pure dict of parameters (`init_params`) and call the
pure functions `forward` / `forward_with_cache` inside their own `jax.jit`. Parameters carry
*logical* axis names only (`embed`, `heads`, `mlp`, ...); `si_jax.sharding` maps them to the mesh.

One attention path serves both training and sampling, so the two agree to the last bit of math:
  * training: `forward(params, tokens)` with a causal mask restricted to each packed segment;
  * sampling: `forward_with_cache(params, tokens, positions, input_mask, cache)` writes this
    call's keys/values into a preallocated `KVCache` at `cache.index` and attends over the cache
    (prefill: T prompt tokens at once; decode: T = 1). A cache only decides the layout: each
    layer's `update(k, v)` stores the new keys/values and returns those to attend over, so
    sampling/paged.py's page pool runs through this same attention. Decoding may pass
    `output_major(cfg, params)`: the same projections with the weights laid out [out, in] (see
    `dense`), faster for skinny decode batches on CPU, equal up to float summation order.

Shape suffixes: B batch, T query length, S key length (cache slots), D d_model, N query heads,
K kv heads, G = N // K query heads per kv head, H head_dim, F mlp width, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
ACTIVATIONS = ('swiglu', 'geglu')
POSITION_ENCODINGS = ('rope', 'none')
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)  # finite: fully masked rows give no NaN.


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Architecture of the LM. Defaults are a Llama-style model; see `from_config_dict`."""

  vocab_size: int = 1024
  d_model: int = 512
  num_layers: int = 8
  num_heads: int = 8
  num_kv_heads: int = 4  # < num_heads: grouped-query attention; 1: multi-query.
  head_dim: int = 64
  mlp_dim: int = 1408
  activation: str = 'swiglu'  # 'swiglu' (Llama/Qwen) or 'geglu' (Gemma).
  norm_eps: float = 1e-6
  norm_scale_plus_one: bool = False  # Gemma's RMSNorm: x * (1 + w), w initialised at 0.
  position_encoding: str = 'rope'  # 'rope' or 'none' (NoPE: causal mask is the only order signal).
  rope_theta: float = 10_000.0
  tie_embeddings: bool = False  # Output projection reuses the input embedding (Gemma).
  embed_scale: bool = False  # Multiply embeddings by sqrt(d_model) (Gemma).
  qk_norm: bool = False  # RMSNorm on queries and keys per head (Qwen3, Gemma3).
  qkv_bias: bool = False  # Biases on the query/key/value projections (Qwen2).
  logit_softcap: float = 0.0  # > 0: logits = cap * tanh(logits / cap) (Gemma2). 0: off.
  param_dtype: str = 'float32'
  dtype: str = 'float32'  # Compute dtype of matmuls; softmax and logits stay float32.
  remat: bool = False  # Recompute each block's activations in the backward pass.

  def __post_init__(self):
    checks = [
        (self.activation in ACTIVATIONS, f'activation={self.activation!r} not in {ACTIVATIONS}'),
        (self.position_encoding in POSITION_ENCODINGS,
         f'position_encoding={self.position_encoding!r} not in {POSITION_ENCODINGS}'),
        (self.param_dtype in _DTYPES, f'param_dtype={self.param_dtype!r} not in {tuple(_DTYPES)}'),
        (self.dtype in _DTYPES, f'dtype={self.dtype!r} not in {tuple(_DTYPES)}'),
        (self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads == 0,
         f'num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}'),
        (min(self.vocab_size, self.d_model, self.num_layers, self.head_dim, self.mlp_dim) > 0,
         'vocab_size, d_model, num_layers, head_dim and mlp_dim must be positive'),
        (self.position_encoding != 'rope' or self.head_dim % 2 == 0,
         f'RoPE needs an even head_dim, got {self.head_dim}'),
    ]
    for ok, message in checks:
      if not ok:
        raise ValueError(f'config.model: {message}')

  @classmethod
  def from_config_dict(cls, model_config) -> TransformerConfig:
    """Builds from the `model` section of an experiment config, naming unknown keys."""
    fields = {f.name for f in dataclasses.fields(cls)}
    given = dict(model_config)
    unknown = sorted(set(given) - fields)
    if unknown:
      raise ValueError(f'config.model has unknown keys {unknown}; allowed: {sorted(fields)}')
    return cls(**given)

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]


def _param(rngs: nnx.Rngs, init, shape, axes, dtype) -> nnx.Param:
  """A parameter annotated with logical axis names (mapped to the mesh by si_jax.sharding).

  eager_sharding=False: modules are built inside `jax.eval_shape` / `jax.jit(init)`, whose
  out_shardings place the parameters; flax must not try to shard them itself.
  """
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=axes, eager_sharding=False)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, cfg: TransformerConfig, rngs: nnx.Rngs):
    init = nnx.initializers.zeros if cfg.norm_scale_plus_one else nnx.initializers.ones
    self.scale = _param(rngs, init, (dim,), ('norm',), cfg.jnp_param_dtype)
    self.eps = cfg.norm_eps
    self.plus_one = cfg.norm_scale_plus_one

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32).reshape((1,) * (x.ndim - 1) + (-1,))
    return (x32 * (1.0 + scale if self.plus_one else scale)).astype(x.dtype)


def apply_rope(x_BxTxNxH, positions_BxT, theta: float):
  """Rotary embedding, half-split layout (as Llama/Gemma/Qwen checkpoints use)."""
  half = x_BxTxNxH.shape[-1] // 2
  freqs_H2 = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles_BxTxH2 = positions_BxT[..., None].astype(jnp.float32) * freqs_H2[None, None]
  sin, cos = jnp.sin(angles_BxTxH2)[:, :, None, :], jnp.cos(angles_BxTxH2)[:, :, None, :]
  x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def dense(x_BxTxI, w_IxO, w_OxI=None):
  """x @ w: contracts x's last axis with w's first ([B, T, I] x [I, O...] -> [B, T, O...]; O
  may be several axes, e.g. heads x head_dim).

  With `w_OxI`, the same weight flattened and stored output-major (see `output_major`), it
  computes (w_OxI @ x^T)^T instead: the same math, laid out for skinny decode matmuls. On CPU,
  Eigen multiplies a [16, I] activation by an [I, O] weight at ~40 GFLOP/s and the output-major
  way at ~75 (experiments/benchmarks/README.md). The barrier keeps XLA from folding the
  transposes back into the slow form."""
  if w_OxI is None:
    return jnp.tensordot(x_BxTxI, w_IxO, axes=1)
  b, t, i = x_BxTxI.shape
  y_OxR = jnp.einsum('OI,RI->OR', w_OxI, x_BxTxI.reshape(b * t, i))
  return jax.lax.optimization_barrier(y_OxR).T.reshape((b, t) + w_IxO.shape[1:])


class Attention(nnx.Module):

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    init = nnx.initializers.normal(stddev=d ** -0.5)
    pdt = cfg.jnp_param_dtype
    self.q_DxNxH = _param(rngs, init, (d, n, h), ('embed', 'heads', 'head_dim'), pdt)
    self.k_DxKxH = _param(rngs, init, (d, k, h), ('embed', 'kv_heads', 'head_dim'), pdt)
    self.v_DxKxH = _param(rngs, init, (d, k, h), ('embed', 'kv_heads', 'head_dim'), pdt)
    out_init = nnx.initializers.normal(stddev=(n * h) ** -0.5 / (2 * cfg.num_layers) ** 0.5)
    self.o_NxHxD = _param(rngs, out_init, (n, h, d), ('heads', 'head_dim', 'embed'), pdt)
    if cfg.qkv_bias:
      zeros = nnx.initializers.zeros
      self.q_bias_NxH = _param(rngs, zeros, (n, h), ('heads', 'head_dim'), pdt)
      self.k_bias_KxH = _param(rngs, zeros, (k, h), ('kv_heads', 'head_dim'), pdt)
      self.v_bias_KxH = _param(rngs, zeros, (k, h), ('kv_heads', 'head_dim'), pdt)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, cfg, rngs)
      self.k_norm = RMSNorm(h, cfg, rngs)
    self.cfg = cfg

  def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, layer_cache=None, out_major=None):
    """Returns (output, the updated layer cache or None).

    layer_cache: where this call's keys/values are written and what is attended over (a
    `DenseKV`, or sampling/paged.py's `PagedKV`); mask_BxTxS indexes the slots it returns.
    out_major: this layer's output-major weights (see `dense`), or None.
    """
    cfg, dt = self.cfg, self.cfg.jnp_dtype
    w = out_major or {}
    q, k, v = (dense(x_BxTxD, getattr(self, name)[...].astype(dt), w.get(name))
               for name in ('q_DxNxH', 'k_DxKxH', 'v_DxKxH'))
    if cfg.qkv_bias:
      q = q + self.q_bias_NxH[...].astype(dt)[None, None]
      k = k + self.k_bias_KxH[...].astype(dt)[None, None]
      v = v + self.v_bias_KxH[...].astype(dt)[None, None]
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    if cfg.position_encoding == 'rope':
      q = apply_rope(q, positions_BxT, cfg.rope_theta)
      k = apply_rope(k, positions_BxT, cfg.rope_theta)
    # Keys/values heads-major, [B, K, S, H]: the attention dots then read them (and a decode step
    # the whole cache) in place; a [B, S, K, H] cache was transposed in full every step.
    k = k.transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    if layer_cache is not None:
      k, v, layer_cache = layer_cache.update(k, v)
    b, t, n, h = q.shape
    kv_heads = k.shape[1]
    q_BxTxKxGxH = q.reshape(b, t, kv_heads, n // kv_heads, h) * (h ** -0.5)
    logits = jnp.einsum('BTKGH,BKSH->BKGTS', q_BxTxKxGxH, k.astype(dt),
                        preferred_element_type=jnp.float32)
    logits = jnp.where(mask_BxTxS[:, None, None], logits, _MASK_VALUE)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    out_BxKxGxTxH = jnp.einsum('BKGTS,BKSH->BKGTH', probs, v.astype(dt))
    # Heads flattened on both sides ([N*H, D] is a free reshape of o): 'BTNH,NHD' made XLA
    # transpose the whole o weight every decode step instead of the small activation.
    out_BxTxE = out_BxKxGxTxH.transpose(0, 3, 1, 2, 4).reshape(b, t, n * h)
    out = dense(out_BxTxE, self.o_NxHxD[...].astype(dt).reshape(n * h, -1), w.get('o_NxHxD'))
    return out, layer_cache


class MLP(nnx.Module):

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    d, f, pdt = cfg.d_model, cfg.mlp_dim, cfg.jnp_param_dtype
    init = nnx.initializers.normal(stddev=d ** -0.5)
    self.gate_DxF = _param(rngs, init, (d, f), ('embed', 'mlp'), pdt)
    self.up_DxF = _param(rngs, init, (d, f), ('embed', 'mlp'), pdt)
    down_init = nnx.initializers.normal(stddev=f ** -0.5 / (2 * cfg.num_layers) ** 0.5)
    self.down_FxD = _param(rngs, down_init, (f, d), ('mlp', 'embed'), pdt)
    self.act = jax.nn.silu if cfg.activation == 'swiglu' else functools.partial(
        jax.nn.gelu, approximate=True)
    self.dt = cfg.jnp_dtype

  def __call__(self, x_BxTxD, out_major=None):
    w = out_major or {}
    gate = dense(x_BxTxD, self.gate_DxF[...].astype(self.dt), w.get('gate_DxF'))
    up = dense(x_BxTxD, self.up_DxF[...].astype(self.dt), w.get('up_DxF'))
    return dense(self.act(gate) * up, self.down_FxD[...].astype(self.dt), w.get('down_FxD'))


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg, rngs)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg, rngs)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x, positions, mask, layer_cache=None, out_major=None):
    w = out_major or {}
    attn_out, layer_cache = self.attn(self.attn_norm(x), positions, mask, layer_cache,
                                      w.get('attn'))
    x = x + attn_out
    return x + self.mlp(self.mlp_norm(x), w.get('mlp')), layer_cache


class Transformer(nnx.Module):

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    pdt = cfg.jnp_param_dtype
    self.embed_VxD = _param(rngs, nnx.initializers.normal(stddev=1.0),
                            (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'), pdt)
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg, rngs)
    if not cfg.tie_embeddings:
      self.unembed_DxV = _param(rngs, nnx.initializers.normal(stddev=cfg.d_model ** -0.5),
                                (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'), pdt)
    self.cfg = cfg

  def hidden(self, tokens_BxT, positions_BxT, mask_BxTxS, cache=None, out_major=None):
    """Final-normed hidden states [B, T, D] and each layer's updated cache (None without one):
    the backbone that heads (the LM's unembedding, a reward model's scalar head) sit on.

    cache: None, a `KVCache`, or any cache whose `layer(i)` gives layer i's `update`-able
    cache (sampling/paged.py's pages).
    out_major: None, or `output_major(cfg, params)`: the blocks' matmuls then run output-major.
    """
    cfg, dt = self.cfg, self.cfg.jnp_dtype
    x = jnp.take(self.embed_VxD[...], tokens_BxT, axis=0).astype(dt)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.d_model ** 0.5, dt)
    new_layers = []
    for i, block in enumerate(self.blocks):
      layer_cache = None if cache is None else cache.layer(i)
      args = (x, positions_BxT, mask_BxTxS, layer_cache,
              None if out_major is None else out_major['blocks'][i])
      if cfg.remat:
        x, layer_cache = nnx.remat(lambda blk, *a: blk(*a))(block, *args)
      else:
        x, layer_cache = block(*args)
      new_layers.append(layer_cache)
    return self.final_norm(x), new_layers

  def __call__(self, tokens_BxT, positions_BxT, mask_BxTxS, cache=None, out_major=None):
    cfg, dt = self.cfg, self.cfg.jnp_dtype
    x, new_layers = self.hidden(tokens_BxT, positions_BxT, mask_BxTxS, cache, out_major)
    if cfg.tie_embeddings:
      logits = jnp.einsum('BTD,VD->BTV', x, self.embed_VxD[...].astype(dt),
                          preferred_element_type=jnp.float32)
    else:
      logits = jnp.einsum('BTD,DV->BTV', x, self.unembed_DxV[...].astype(dt),
                          preferred_element_type=jnp.float32)
    if cfg.logit_softcap > 0:
      logits = cfg.logit_softcap * jnp.tanh(logits / cfg.logit_softcap)
    return logits, new_layers


# --- The functional core: what jitted steps call. ---------------------------------------------


@flax.struct.dataclass
class KVCache:
  """Preallocated per-layer keys/values for sampling.

  `index` is the next slot to write (shared by the batch: prompts are left-padded by the
  sampler); `valid_BxS` marks slots holding real tokens, so padding and unwritten slots are
  never attended to.
  """
  k: list[jax.Array]  # L x [B, K, S, H]
  v: list[jax.Array]  # L x [B, K, S, H]
  valid_BxS: jax.Array  # bool
  index: jax.Array  # int32 scalar

  @property
  def max_len(self) -> int:
    return self.valid_BxS.shape[1]

  def layer(self, i: int) -> DenseKV:
    return DenseKV(k=self.k[i], v=self.v[i], index=self.index)


@flax.struct.dataclass
class DenseKV:
  """One layer of a `KVCache`: a call's T keys/values go to slots [index, index + T)."""
  k: jax.Array  # [B, K, S, H]
  v: jax.Array  # [B, K, S, H]
  index: jax.Array

  def update(self, k_BxKxTxH, v_BxKxTxH):
    """Writes this call's keys/values; returns (keys, values) to attend over and the new layer."""
    k = jax.lax.dynamic_update_slice_in_dim(self.k, k_BxKxTxH.astype(self.k.dtype), self.index, 2)
    v = jax.lax.dynamic_update_slice_in_dim(self.v, v_BxKxTxH.astype(self.v.dtype), self.index, 2)
    return k, v, DenseKV(k=k, v=v, index=self.index)


def init_cache(cfg: TransformerConfig, batch_size: int, max_len: int, dtype=None) -> KVCache:
  shape = (batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
  dtype = dtype or cfg.jnp_dtype
  return KVCache(
      k=[jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
      v=[jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
      valid_BxS=jnp.zeros((batch_size, max_len), jnp.bool_),
      index=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class Model:
  """The static half of a split model: config + graphdef. Hashable, so jit can close over it."""
  cfg: TransformerConfig
  graphdef: Any

  def __hash__(self):
    return hash(self.cfg)

  def __eq__(self, other):
    return isinstance(other, Model) and self.cfg == other.cfg


def build(cfg: TransformerConfig, rng: jax.Array) -> tuple[Model, dict]:
  """Builds the model and returns (static Model, pure param dict). Jit-compatible in `rng`."""
  graphdef, state = nnx.split(Transformer(cfg, nnx.Rngs(params=rng)))
  return Model(cfg, graphdef), nnx.to_pure_dict(state)


def abstract_model(cfg: TransformerConfig) -> tuple[Model, dict]:
  """(Model, param ShapeDtypeStructs with logical axes available via `logical_axes`)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(params=0))))
  return Model(cfg, graphdef), nnx.to_pure_dict(state)


def logical_axes(cfg: TransformerConfig, module_cls=Transformer) -> dict:
  """The logical axis names of every parameter of `module_cls(cfg)`, as a tree matching its
  param dict."""
  state = nnx.state(nnx.eval_shape(lambda: module_cls(cfg, nnx.Rngs(params=0))))
  specs = nnx.get_partition_spec(state)
  return jax.tree.map(lambda p: tuple(p), nnx.to_pure_dict(specs),
                      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))


def output_major(cfg: TransformerConfig, params) -> dict:
  """The blocks' matmul weights as [out, in] in the compute dtype, for `dense`'s output-major
  decode: `{'blocks': {i: {'attn': {...}, 'mlp': {...}}}}`, keyed like params. A second copy of
  those weights, made once per sampling call outside its decode loop."""
  dt = cfg.jnp_dtype
  def out_in(w, in_dims):  # [in..., out...] -> [prod(out), prod(in)]
    return w.astype(dt).reshape(math.prod(w.shape[:in_dims]), -1).T
  blocks = {}
  for i, block in params['blocks'].items():
    attn, mlp = block['attn'], block['mlp']
    blocks[i] = dict(
        attn={name: out_in(attn[name], 1) for name in ('q_DxNxH', 'k_DxKxH', 'v_DxKxH')}
        | {'o_NxHxD': out_in(attn['o_NxHxD'], 2)},
        mlp={name: out_in(mlp[name], 1) for name in ('gate_DxF', 'up_DxF', 'down_FxD')})
  return {'blocks': blocks}


def causal_segment_mask(segment_ids_BxT):
  """Query t sees key s iff s <= t and both lie in the same (non-padding, id > 0) segment."""
  t = segment_ids_BxT.shape[1]
  causal_TxS = jnp.tril(jnp.ones((t, t), jnp.bool_))
  same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
  return causal_TxS[None] & same & (segment_ids_BxT[:, None, :] > 0)


def forward(model: Model, params, tokens_BxT, segment_ids_BxT=None, positions_BxT=None):
  """Training forward: logits [B, T, V] float32.

  segment_ids: ids > 0 of packed sequences (0 = padding); default: one segment per row.
  positions: default 0..T-1 (restart them per segment when packing).
  """
  b, t = tokens_BxT.shape
  if segment_ids_BxT is None:
    segment_ids_BxT = jnp.ones((b, t), jnp.int32)
  if positions_BxT is None:
    positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  module = nnx.merge(model.graphdef, params)
  logits, _ = module(tokens_BxT, positions_BxT, causal_segment_mask(segment_ids_BxT))
  return logits


def forward_with_cache(model: Model, params, tokens_BxT, positions_BxT, input_mask_BxT,
                       cache: KVCache, out_major=None):
  """Cache-aware forward: prefill (T > 1) or decode (T = 1). Returns (logits, new cache).

  The T new tokens are written to cache slots [index, index + T). input_mask marks which of them
  are real (False for left padding). Query t attends to valid slots s <= index + t.
  out_major: None, or `output_major(model.cfg, params)` (same math; faster decode on CPU).
  """
  t = tokens_BxT.shape[1]
  slots_T = cache.index + jnp.arange(t)
  valid = jax.lax.dynamic_update_slice_in_dim(cache.valid_BxS, input_mask_BxT, cache.index, 1)
  causal_TxS = jnp.arange(cache.max_len)[None, :] <= slots_T[:, None]
  mask_BxTxS = valid[:, None, :] & causal_TxS[None]
  module = nnx.merge(model.graphdef, params)
  logits, layers = module(tokens_BxT, positions_BxT, mask_BxTxS, cache, out_major)
  new_cache = KVCache(k=[x.k for x in layers], v=[x.v for x in layers], valid_BxS=valid,
                      index=cache.index + t)
  return logits, new_cache


def param_count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))

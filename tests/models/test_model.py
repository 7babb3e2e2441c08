"""Model numerics: cache == full recompute, padding invariance, knobs, remat, config errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax import models
from tests.helpers import tiny_model_config

forward = jax.jit(models.forward, static_argnums=0)
forward_with_cache = jax.jit(models.forward_with_cache, static_argnums=0)


def _incremental_logits(model, params, tokens, prefill_len, out_major=None):
  """Prefill `prefill_len` tokens into a cache, then decode the rest one token at a time
  (output-major matmuls when `out_major` is given)."""
  b, t = tokens.shape
  cache = models.init_cache(model.cfg, b, t + 3)
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  ones = jnp.ones((b, t), bool)
  logits, cache = forward_with_cache(model, params, tokens[:, :prefill_len],
                                            pos[:, :prefill_len], ones[:, :prefill_len], cache)
  out = [logits]
  for i in range(prefill_len, t):
    logits, cache = forward_with_cache(model, params, tokens[:, i:i + 1], pos[:, i:i + 1],
                                       ones[:, i:i + 1], cache, out_major)
    out.append(logits)
  return jnp.concatenate(out, axis=1)


@pytest.mark.parametrize('overrides', [
    dict(position_encoding='rope'),
    dict(position_encoding='none'),
    dict(num_kv_heads=1, qk_norm=True),  # MQA + QK-norm (Qwen3-like)
    dict(activation='geglu', norm_scale_plus_one=True, tie_embeddings=True, embed_scale=True,
         logit_softcap=30.0, num_kv_heads=4),  # Gemma-like
    dict(qkv_bias=True),  # Qwen2-like
])
def test_kv_cache_matches_full_forward(overrides):
  """Decoding token by token gives the full forward's logits, with the decode matmuls in
  either layout (`models.output_major`, what the sampler uses on CPU)."""
  cfg = tiny_model_config(**overrides)
  model, params = models.build(cfg, jax.random.PRNGKey(0))
  if cfg.qkv_bias:  # Zero-initialised: make them matter.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.1 if 'bias' in jax.tree_util.keystr(path) else x, params)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 11), 0, cfg.vocab_size)
  full = forward(model, params, tokens)
  for out_major in (None, models.output_major(cfg, params)):
    incremental = _incremental_logits(model, params, tokens, 4, out_major)
    np.testing.assert_allclose(incremental, full, atol=2e-5, rtol=1e-5)


def test_right_padded_batch_equals_each_alone(tiny_cfg):
  model, params = models.build(tiny_cfg, jax.random.PRNGKey(0))
  lengths = [9, 4, 1]
  seqs = [np.asarray(jax.random.randint(jax.random.PRNGKey(i), (n,), 4, 32)) for i, n in
          enumerate(lengths)]
  tokens = np.zeros((3, 9), np.int32)
  seg = np.zeros((3, 9), np.int32)
  for i, s in enumerate(seqs):
    tokens[i, :len(s)], seg[i, :len(s)] = s, 1
  batched = forward(model, params, jnp.asarray(tokens), jnp.asarray(seg))
  for i, s in enumerate(seqs):
    alone = forward(model, params, jnp.asarray(s)[None])
    np.testing.assert_allclose(batched[i, :len(s)], alone[0], atol=1e-5, rtol=1e-5)


def test_left_padded_prefill_equals_each_alone(tiny_cfg):
  """The sampler's layout: left padding, positions counting real tokens only."""
  model, params = models.build(tiny_cfg, jax.random.PRNGKey(0))
  seqs = [np.arange(4, 4 + n) % 32 for n in (7, 3)]
  tokens, mask = np.zeros((2, 7), np.int32), np.zeros((2, 7), bool)
  for i, s in enumerate(seqs):
    tokens[i, 7 - len(s):], mask[i, 7 - len(s):] = s, True
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  cache = models.init_cache(tiny_cfg, 2, 10)
  logits, cache = forward_with_cache(model, params, jnp.asarray(tokens),
                                            jnp.asarray(positions), jnp.asarray(mask), cache)
  nxt = jnp.array([[5], [6]])
  step_logits, _ = forward_with_cache(model, params, nxt, jnp.asarray(positions[:, -1:] + 1),
                                             jnp.ones((2, 1), bool), cache)
  for i, s in enumerate(seqs):
    alone = forward(model, params, jnp.concatenate([jnp.asarray(s), nxt[i]])[None])
    np.testing.assert_allclose(logits[i, -1], alone[0, len(s) - 1], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(step_logits[i, 0], alone[0, len(s)], atol=1e-5, rtol=1e-5)


def test_packed_segments_equal_separate_sequences(tiny_cfg):
  model, params = models.build(tiny_cfg, jax.random.PRNGKey(0))
  a, b = jnp.arange(4, 9), jnp.arange(10, 13)
  packed = jnp.concatenate([a, b])[None]
  seg = jnp.array([[1] * 5 + [2] * 3])
  pos = jnp.array([list(range(5)) + list(range(3))])
  out = forward(model, params, packed, seg, pos)
  np.testing.assert_allclose(out[0, :5], forward(model, params, a[None])[0], atol=1e-5)
  np.testing.assert_allclose(out[0, 5:], forward(model, params, b[None])[0], atol=1e-5)


def test_remat_gives_same_gradients(tiny_cfg):
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, 32)
  grads = []
  for remat in (False, True):
    model, params = models.build(tiny_model_config(remat=remat), jax.random.PRNGKey(0))
    grads.append(jax.jit(jax.grad(lambda p: models.forward(model, p, tokens).sum()))(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), *grads)


def test_bfloat16_compute_close_to_float32(tiny_cfg):
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, 32)
  model32, params = models.build(tiny_cfg, jax.random.PRNGKey(0))
  model16, _ = models.build(tiny_model_config(dtype='bfloat16'), jax.random.PRNGKey(0))
  out32 = forward(model32, params, tokens)
  out16 = forward(model16, params, tokens)
  assert out16.dtype == jnp.float32  # logits stay float32
  np.testing.assert_allclose(out16, out32, atol=0.15)


def test_params_carry_logical_axes(tiny_cfg):
  axes = models.logical_axes(tiny_cfg)
  assert axes['embed_VxD'] == ('vocab', 'embed')
  assert axes['blocks'][0]['attn']['k_DxKxH'] == ('embed', 'kv_heads', 'head_dim')
  assert axes['blocks'][1]['mlp']['down_FxD'] == ('mlp', 'embed')
  _, params = models.build(tiny_cfg, jax.random.PRNGKey(0))
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple)) == \
      jax.tree.structure(params)


@pytest.mark.parametrize('bad, field', [
    (dict(activation='relu'), 'activation'),
    (dict(num_heads=4, num_kv_heads=3), 'num_kv_heads'),
    (dict(dtype='float64'), 'dtype'),
    (dict(position_encoding='alibi'), 'position_encoding'),
])
def test_bad_model_config_names_the_field(bad, field):
  with pytest.raises(ValueError, match=field):
    tiny_model_config(**bad)


def test_unknown_model_key_is_named():
  with pytest.raises(ValueError, match='num_experts'):
    models.TransformerConfig.from_config_dict({'num_experts': 8})

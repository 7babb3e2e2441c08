"""Hugging Face checkpoints in and out: LlamaForCausalLM, GemmaForCausalLM, Qwen2ForCausalLM.

  cfg = hf.load_config(path)                       # config.json -> TransformerConfig
  params = hf.load_params(path, cfg, shardings)    # *.safetensors -> params, born sharded
  hf.save(path, cfg, params)                       # -> config.json + model.safetensors
  python -m si_jax.export --run=<si_jax workdir> --out=<dir>      # export a run

Layouts. A torch Linear stores [out, in]; si_jax stores [in, ...out] with heads split out:
  q_proj.weight [N*H, D] -> q_DxNxH      o_proj.weight [D, N*H] -> o_NxHxD
  gate_proj / up_proj [F, D] -> [D, F]  down_proj [D, F] -> [F, D]   lm_head [V, D] -> [D, V]
HF checkpoints keep each head's rotary dimensions in the half-split layout (Meta's interleaved
pairs are permuted by HF's conversion scripts), the layout `apply_rope` uses: no permutation.
Gemma's norm weights are stored as w in x * (1 + w), as `norm_scale_plus_one` reads them.

Safetensors files are read through a memory map, and each device's shard is cut from it by
`jax.make_array_from_callback`: a tensor is never copied whole to the host, let alone once per
device. Writing streams one tensor at a time. The format (a little-endian u64 header length, a
JSON header of dtype / shape / byte offsets, the raw bytes) is small enough that reading it here
is simpler than the `safetensors` package, whose numpy API loads whole tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import jax
import ml_dtypes
import numpy as np

from si_jax.models import transformer

ARCHITECTURES = ('LlamaForCausalLM', 'GemmaForCausalLM', 'Qwen2ForCausalLM')
_MODEL_TYPES = {'LlamaForCausalLM': 'llama', 'GemmaForCausalLM': 'gemma',
                'Qwen2ForCausalLM': 'qwen2'}
_DTYPES = {'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_TORCH_DTYPES = {'float32': 'float32', 'bfloat16': 'bfloat16', 'float16': 'float16'}
PARAM_DTYPES = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16, 'float16': np.float16}


def is_checkpoint(path: str) -> bool:
  """A directory holding an HF config.json (rather than an si_jax run)."""
  return bool(path) and os.path.exists(os.path.join(path, 'config.json'))


# --- Config -------------------------------------------------------------------------------------


def _read_json(path: str, what: str) -> dict:
  if not os.path.exists(path):
    raise FileNotFoundError(f'{what}: {path} does not exist; an HF checkpoint directory holds '
                            f'config.json and model.safetensors (or sharded *.safetensors)')
  with open(path) as f:
    return json.load(f)


def _rope_theta(hf: dict) -> float:
  """rope_theta, from the top level or (newer transformers) `rope_parameters`; any rope scaling
  is refused rather than silently ignored."""
  for key in ('rope_scaling', 'rope_parameters'):
    rope = hf.get(key) or {}
    kind = rope.get('rope_type', rope.get('type', 'default'))
    if kind != 'default':
      raise ValueError(f'config.json: {key}.rope_type={kind!r} is not supported (only plain '
                       f'RoPE); drop the scaling or add it to si_jax.models.transformer')
  return float(hf.get('rope_theta') or (hf.get('rope_parameters') or {}).get('rope_theta', 1e4))


def config_from_hf(hf: dict, **overrides) -> transformer.TransformerConfig:
  """Maps an HF config dict to a TransformerConfig; overrides set runtime knobs (dtype, remat;
  param_dtype defaults to the checkpoint's).

  Fails naming the field of anything the si_jax model would compute differently.
  """
  by_type = {t: a for a, t in _MODEL_TYPES.items()}
  archs = hf.get('architectures') or [by_type.get(hf.get('model_type'),
                                                  f"model_type={hf.get('model_type')!r}")]
  arch = archs[0]
  if arch not in ARCHITECTURES:
    raise ValueError(f'config.json: architecture {arch} is not supported; si_jax loads '
                     f'{", ".join(ARCHITECTURES)}')
  act = hf.get('hidden_activation') or hf.get('hidden_act')
  unsupported = {
      'attention_bias': hf.get('attention_bias', False) and arch != 'Qwen2ForCausalLM',
      'mlp_bias': hf.get('mlp_bias', False),
      'use_sliding_window': hf.get('use_sliding_window', False),
      'layer_types': any(t != 'full_attention' for t in hf.get('layer_types') or ()),
      'hidden_act': act not in ({'gelu_pytorch_tanh', None} if arch == 'GemmaForCausalLM'
                                else {'silu'}),
  }
  bad = [f'{k}={hf.get(k, act)!r}' for k, v in unsupported.items() if v]
  if bad:
    raise ValueError(f'config.json: {", ".join(bad)} not supported for {arch}')
  gemma = arch == 'GemmaForCausalLM'
  heads = hf['num_attention_heads']
  fields = dict(
      vocab_size=hf['vocab_size'], d_model=hf['hidden_size'],
      num_layers=hf['num_hidden_layers'], num_heads=heads,
      num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=hf.get('head_dim') or hf['hidden_size'] // heads,
      mlp_dim=hf['intermediate_size'], activation='geglu' if gemma else 'swiglu',
      norm_eps=hf.get('rms_norm_eps', 1e-6), norm_scale_plus_one=gemma,
      rope_theta=_rope_theta(hf), tie_embeddings=hf.get('tie_word_embeddings', gemma),
      embed_scale=gemma, qkv_bias=arch == 'Qwen2ForCausalLM',
      param_dtype=_TORCH_DTYPES.get(hf.get('dtype') or hf.get('torch_dtype'), 'float32'))
  fields.update(overrides)
  return transformer.TransformerConfig(**fields)


def load_config(path: str, **overrides) -> transformer.TransformerConfig:
  return config_from_hf(_read_json(os.path.join(path, 'config.json'), 'HF config'), **overrides)


def architecture_of(cfg: transformer.TransformerConfig) -> str:
  """The HF class that computes what `cfg` computes, or an error naming the knob none has."""
  bad = [k for k in ('qk_norm', 'logit_softcap') if getattr(cfg, k)]
  if cfg.position_encoding != 'rope':
    bad.append(f'position_encoding={cfg.position_encoding!r}')
  gemma = (cfg.activation == 'geglu', cfg.norm_scale_plus_one, cfg.embed_scale)
  if all(gemma) and cfg.tie_embeddings and not cfg.qkv_bias and not bad:
    return 'GemmaForCausalLM'
  if not any(gemma) and not bad:
    return 'Qwen2ForCausalLM' if cfg.qkv_bias else 'LlamaForCausalLM'
  raise ValueError(f'no HF architecture computes this model: {bad or gemma} (Gemma needs '
                   f'geglu + norm_scale_plus_one + embed_scale + tie_embeddings; Llama/Qwen2 '
                   f'none of them)')


def hf_config(cfg: transformer.TransformerConfig, max_position_embeddings: int = 8192,
              **extra) -> dict:
  """The config.json of `cfg` (extra: e.g. bos_token_id / eos_token_id of its tokenizer)."""
  arch = architecture_of(cfg)
  out = dict(
      architectures=[arch], model_type=_MODEL_TYPES[arch], vocab_size=cfg.vocab_size,
      hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
      num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
      num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
      rope_theta=cfg.rope_theta, max_position_embeddings=max_position_embeddings,
      tie_word_embeddings=cfg.tie_embeddings, torch_dtype=_TORCH_DTYPES[cfg.param_dtype],
      dtype=_TORCH_DTYPES[cfg.param_dtype])
  if arch == 'GemmaForCausalLM':
    out.update(hidden_activation='gelu_pytorch_tanh', hidden_act='gelu_pytorch_tanh')
  else:
    out.update(hidden_act='silu')
  if arch == 'LlamaForCausalLM':
    out.update(attention_bias=False, mlp_bias=False)
  if arch == 'Qwen2ForCausalLM':
    out.update(use_sliding_window=False)
  out.update(extra)
  return out


# --- Weight names and layouts -------------------------------------------------------------------


def _weight_map(cfg: transformer.TransformerConfig):
  """[(param path, HF tensor name, HF -> si_jax, si_jax -> HF)] for every param of `cfg`."""
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  same = (lambda w: w, lambda w: w)
  linear = (lambda w: w.T, lambda w: w.T)  # [out, in] <-> [in, out]
  heads_out = lambda heads: (lambda w: w.T.reshape(d, heads, h),
                             lambda w: w.reshape(d, heads * h).T)
  split_bias = lambda heads: (lambda b: b.reshape(heads, h), lambda b: b.reshape(heads * h))
  o_proj = (lambda w: w.T.reshape(n, h, d), lambda w: w.reshape(n * h, d).T)
  rows = [(('embed_VxD',), 'model.embed_tokens.weight', *same),
          (('final_norm', 'scale'), 'model.norm.weight', *same)]
  if not cfg.tie_embeddings:
    rows.append((('unembed_DxV',), 'lm_head.weight', *linear))
  for i in range(cfg.num_layers):
    p = f'model.layers.{i}.'
    rows += [
        (('blocks', i, 'attn_norm', 'scale'), p + 'input_layernorm.weight', *same),
        (('blocks', i, 'mlp_norm', 'scale'), p + 'post_attention_layernorm.weight', *same),
        (('blocks', i, 'attn', 'q_DxNxH'), p + 'self_attn.q_proj.weight', *heads_out(n)),
        (('blocks', i, 'attn', 'k_DxKxH'), p + 'self_attn.k_proj.weight', *heads_out(k)),
        (('blocks', i, 'attn', 'v_DxKxH'), p + 'self_attn.v_proj.weight', *heads_out(k)),
        (('blocks', i, 'attn', 'o_NxHxD'), p + 'self_attn.o_proj.weight', *o_proj),
        (('blocks', i, 'mlp', 'gate_DxF'), p + 'mlp.gate_proj.weight', *linear),
        (('blocks', i, 'mlp', 'up_DxF'), p + 'mlp.up_proj.weight', *linear),
        (('blocks', i, 'mlp', 'down_FxD'), p + 'mlp.down_proj.weight', *linear)]
    if cfg.qkv_bias:
      rows += [(('blocks', i, 'attn', 'q_bias_NxH'), p + 'self_attn.q_proj.bias', *split_bias(n)),
               (('blocks', i, 'attn', 'k_bias_KxH'), p + 'self_attn.k_proj.bias', *split_bias(k)),
               (('blocks', i, 'attn', 'v_bias_KxH'), p + 'self_attn.v_proj.bias', *split_bias(k))]
  return rows


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# --- Safetensors ---------------------------------------------------------------------------------


def _open_safetensors(path: str) -> dict[str, np.ndarray]:
  """Name -> read-only memory-mapped array of one .safetensors file (nothing is read yet)."""
  with open(path, 'rb') as f:
    (header_len,) = struct.unpack('<Q', f.read(8))
    header = json.loads(f.read(header_len))
  header.pop('__metadata__', None)
  tensors = {}
  for name, info in header.items():
    if info['dtype'] not in _DTYPES:
      raise ValueError(f'{path}: tensor {name} has dtype {info["dtype"]}; si_jax reads '
                       f'{sorted(_DTYPES)}')
    begin, end = info['data_offsets']
    dtype = np.dtype(_DTYPES[info['dtype']])
    shape = tuple(info['shape'])
    if end - begin != dtype.itemsize * int(np.prod(shape)):
      raise ValueError(f'{path}: tensor {name} has {end - begin} bytes, not {shape} x '
                       f'{dtype.itemsize}: the file is corrupt')
    tensors[name] = np.memmap(path, dtype=dtype, mode='r', offset=8 + header_len + begin,
                              shape=shape) if shape and np.prod(shape) else np.zeros(shape, dtype)
  return tensors


def _open_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a checkpoint directory: model.safetensors or an index of shards."""
  index = os.path.join(path, 'model.safetensors.index.json')
  if os.path.exists(index):
    files = sorted(set(_read_json(index, 'HF index')['weight_map'].values()))
  else:
    files = sorted(f for f in os.listdir(path) if f.endswith('.safetensors'))
  if not files:
    raise FileNotFoundError(f'{path}: no *.safetensors files (PyTorch .bin checkpoints are not '
                            f'read: re-save with save_pretrained(safe_serialization=True))')
  tensors = {}
  for name in files:
    tensors.update(_open_safetensors(os.path.join(path, name)))
  return tensors


def load_params(path: str, cfg: transformer.TransformerConfig, shardings=None) -> dict:
  """The params of the checkpoint in `path` as `cfg.param_dtype` arrays, each placed directly in
  its sharding (a tree like the params; None: the default device)."""
  tensors = _open_checkpoint(path)
  _, abstract = transformer.abstract_model(cfg)
  dtype = PARAM_DTYPES[cfg.param_dtype]
  params = {}
  for param_path, name, to_si, _ in _weight_map(cfg):
    if name not in tensors:
      where = '/'.join(map(str, param_path))
      raise ValueError(f'{path}: tensor {name} is missing (needed by {where} of a '
                       f'{architecture_of(cfg)}); the checkpoint does not match config.json')
    expected = _get(abstract, param_path).shape
    host = to_si(tensors[name])  # A view of the memory map: nothing is read yet.
    if host.shape != expected:
      raise ValueError(f'{path}: tensor {name} has shape {tensors[name].shape}, which gives '
                       f'{host.shape}, but config.json implies {expected}')
    if shardings is None:
      value = jax.device_put(np.asarray(host, dtype))
    else:
      value = jax.make_array_from_callback(
          expected, _get(shardings, param_path),
          lambda index, host=host: np.ascontiguousarray(host[index], dtype))
    _set(params, param_path, value)
  return params


def save(path: str, cfg: transformer.TransformerConfig, params, tokenizer=None,
         dtype: str | None = None) -> str:
  """Writes `path`/config.json and `path`/model.safetensors (one tensor on the host at a time).

  tokenizer: its `tokenizer.model` is copied beside and its bos/eos ids go to config.json.
  dtype: 'float32' / 'bfloat16' / 'float16' of the saved tensors (default cfg.param_dtype).
  """
  dtype = dtype or cfg.param_dtype
  np_dtype = np.dtype(PARAM_DTYPES[dtype])
  rows = _weight_map(cfg)
  shape_of = lambda p, fn: jax.eval_shape(fn, jax.ShapeDtypeStruct(_get(params, p).shape,
                                                                   np.int8)).shape
  shapes = {name: shape_of(p, to_hf) for p, name, _, to_hf in rows}  # Nothing is allocated.
  header, offset = {'__metadata__': {'format': 'pt'}}, 0
  for _, name, _, _ in rows:
    size = np_dtype.itemsize * int(np.prod(shapes[name]))
    header[name] = {'dtype': _DTYPE_NAMES[np_dtype], 'shape': list(shapes[name]),
                    'data_offsets': [offset, offset + size]}
    offset += size
  blob = json.dumps(header).encode()
  blob += b' ' * (-len(blob) % 8)  # Tensors start 8-byte aligned.
  os.makedirs(path, exist_ok=True)
  target = os.path.join(path, 'model.safetensors')
  with open(target + '.tmp', 'wb') as f:  # Atomic: a reader never sees half a checkpoint.
    f.write(struct.pack('<Q', len(blob)) + blob)
    for param_path, _, _, to_hf in rows:
      host = np.asarray(jax.device_get(_get(params, param_path)))
      f.write(np.ascontiguousarray(to_hf(host), np_dtype).tobytes())
  os.replace(target + '.tmp', target)
  extra = {}
  if tokenizer is not None:
    extra = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                 pad_token_id=tokenizer.pad_id)
    tokenizer.save(path)
  config = hf_config(cfg, **extra)
  config['torch_dtype'] = config['dtype'] = _TORCH_DTYPES[dtype]
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2)
  return path


def apply_to_config(config, path: str) -> None:
  """Points an experiment config at an HF checkpoint: its architecture fills `config.model`
  (dtype and remat stay the experiment's), and `config.init_from` loads its weights."""
  hf_cfg = load_config(path, param_dtype=config.model.param_dtype, dtype=config.model.dtype,
                       remat=config.model.remat)
  with config.unlocked():
    config.model.update(dataclasses.asdict(hf_cfg))
    config.init_from = path

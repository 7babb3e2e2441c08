"""Hugging Face checkpoints in and out, checked against transformers itself (the `parity` extra):
logits, greedy decoding with the KV cache, sharded loading, export, and the errors."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from configs import sft_reverse
from si_jax import experiment, export, models, sharding
from si_jax import main as si_main
from si_jax.models import hf
from si_jax.sampling.sampler import Sampler
from si_jax.tokenizers import Tokenizer

VOCAB = 64
FAMILIES = {
    'llama': (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(tie_word_embeddings=False)),
    'gemma': (transformers.GemmaConfig, transformers.GemmaForCausalLM, dict(head_dim=8)),
    'qwen2': (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(tie_word_embeddings=True)),
}


def _hf_model(family: str, vocab_size: int = VOCAB):
  """A tiny random HF model with non-trivial norm weights and biases (the defaults, ones and
  zeros, would hide a transposed or dropped tensor)."""
  config_cls, model_cls, extra = FAMILIES[family]
  config = config_cls(vocab_size=vocab_size, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      rms_norm_eps=1e-6, max_position_embeddings=128, rope_theta=1000.0,
                      **extra)
  torch.manual_seed(0)
  model = model_cls(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('bias'):
        p.normal_(0.0, 0.5)
      elif 'norm' in name:
        p.uniform_(0.5, 1.5)
  return model


def _save(family: str, path: str):
  """(family, HF model, its directory); llama is saved in shards to test the index."""
  model = _hf_model(family)
  model.save_pretrained(path, max_shard_size='20KB' if family == 'llama' else '1GB')
  return family, model, path


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def saved(request, tmp_path_factory):
  return _save(request.param, str(tmp_path_factory.mktemp(request.param)))


def _padded_batch():
  tokens = np.random.RandomState(0).randint(0, VOCAB, (3, 10))
  mask = np.array([[1] * n + [0] * (10 - n) for n in (10, 6, 3)])
  return tokens, mask


def _hf_logits(model, tokens, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.numpy()


def _our_logits(cfg, params, tokens, mask):
  model, _ = models.abstract_model(cfg)
  return np.asarray(models.forward(model, params, jnp.asarray(tokens), jnp.asarray(mask)))


def test_logits_match_transformers_on_a_padded_batch(saved):
  family, hf_model, path = saved
  if family == 'llama':
    assert os.path.exists(os.path.join(path, 'model.safetensors.index.json'))
  cfg = hf.load_config(path)
  assert cfg.qkv_bias == (family == 'qwen2') and cfg.norm_scale_plus_one == (family == 'gemma')
  tokens, mask = _padded_batch()
  ours = _our_logits(cfg, hf.load_params(path, cfg), tokens, mask)
  real = mask.astype(bool)
  np.testing.assert_allclose(ours[real], _hf_logits(hf_model, tokens, mask)[real], atol=1e-4)


def test_kv_cache_greedy_decode_matches_transformers_generate(saved):
  family, hf_model, path = saved
  del family
  cfg = hf.load_config(path)
  model, _ = models.abstract_model(cfg)
  rng = np.random.RandomState(1)
  prompts = [list(rng.randint(4, VOCAB, n)) for n in (7, 3, 5, 1)]
  ours = Sampler(model).sample(hf.load_params(path, cfg), prompts, max_new_tokens=20,
                               eos_id=-1).tokens  # No eos: all 20 tokens, as HF below.
  width = max(map(len, prompts))
  ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
  attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
  hf_model.generation_config.eos_token_id = None
  ref = hf_model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=20,
                          do_sample=False, pad_token_id=0)[:, width:].numpy()
  np.testing.assert_array_equal(ours, ref)


def test_params_are_born_sharded_and_compute_the_same(tmp_path):
  _, _, path = _save('qwen2', str(tmp_path))  # The family with the most kinds of tensor.
  cfg = hf.load_config(path)
  mesh = sharding.make_mesh({'data': 1, 'fsdp': 4, 'tensor': 2})
  _, abstract = models.abstract_model(cfg)
  shardings = sharding.named_shardings(models.logical_axes(cfg), abstract, mesh)
  params = hf.load_params(path, cfg, shardings)
  jax.tree.map(lambda x, s: np.testing.assert_equal(x.sharding.is_equivalent_to(s, x.ndim), True),
               params, shardings)
  assert params['embed_VxD'].sharding.shard_shape((VOCAB, 32)) != (VOCAB, 32)  # Really split.
  tokens, mask = _padded_batch()
  np.testing.assert_allclose(_our_logits(cfg, params, tokens, mask),
                             _our_logits(cfg, hf.load_params(path, cfg), tokens, mask),
                             atol=1e-6)


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_export_loads_in_transformers_with_the_same_logits(family, tmp_path):
  cfg = hf.config_from_hf(_hf_model(family).config.to_dict())
  _, params = models.build(cfg, jax.random.PRNGKey(3))
  params = jax.tree_util.tree_map_with_path(  # Norm scales and biases away from 1 and 0.
      lambda path, x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(len(str(path))), x.shape)
      if x.ndim < 2 or 'bias' in str(path) else x, params)
  hf.save(str(tmp_path), cfg, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
  assert type(reloaded).__name__ == hf.architecture_of(cfg)
  tokens, mask = _padded_batch()
  real = mask.astype(bool)
  np.testing.assert_allclose(_hf_logits(reloaded, tokens, mask)[real],
                             _our_logits(cfg, params, tokens, mask)[real], atol=1e-4)


def test_bfloat16_round_trip_is_exact(tmp_path):
  cfg = hf.config_from_hf(_hf_model('qwen2').config.to_dict(), param_dtype='bfloat16')
  _, params = models.build(cfg, jax.random.PRNGKey(0))
  hf.save(str(tmp_path), cfg, params)
  assert json.load(open(tmp_path / 'config.json'))['torch_dtype'] == 'bfloat16'
  back = hf.load_params(str(tmp_path), cfg)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               params, back)
  assert back['embed_VxD'].dtype == jnp.bfloat16


def _write_config(path, **fields):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(fields, f)


def test_unsupported_architecture_and_settings_are_named(tmp_path):
  base = _hf_model('llama').config.to_dict()
  with pytest.raises(ValueError, match='MistralForCausalLM'):
    hf.config_from_hf({**base, 'architectures': ['MistralForCausalLM']})
  with pytest.raises(ValueError, match="rope_type='llama3'"):
    hf.config_from_hf({**base, 'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 1e4}})
  with pytest.raises(ValueError, match='mlp_bias'):
    hf.config_from_hf({**base, 'mlp_bias': True})
  with pytest.raises(FileNotFoundError, match='config.json'):
    hf.load_config(str(tmp_path))
  with pytest.raises(ValueError, match='qk_norm'):
    hf.architecture_of(models.TransformerConfig(qk_norm=True))


def test_missing_or_misshapen_tensor_is_named(tmp_path):
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  model = _hf_model('llama')
  state = {k: v.contiguous() for k, v in model.state_dict().items()}
  cfg = hf.config_from_hf(model.config.to_dict())
  missing = 'model.layers.1.mlp.up_proj.weight'
  _write_config(tmp_path / 'a', **model.config.to_dict())
  save_file({k: v for k, v in state.items() if k != missing}, tmp_path / 'a' / 'model.safetensors')
  with pytest.raises(ValueError, match=missing.replace('.', r'\.') + '.*missing'):
    hf.load_params(str(tmp_path / 'a'), cfg)
  _write_config(tmp_path / 'b', **model.config.to_dict())
  save_file({**state, missing: state[missing][:-1]}, tmp_path / 'b' / 'model.safetensors')
  with pytest.raises(ValueError, match='up_proj.*shape'):
    hf.load_params(str(tmp_path / 'b'), cfg)
  _write_config(tmp_path / 'c', **model.config.to_dict())
  with pytest.raises(FileNotFoundError, match='safetensors'):
    hf.load_params(str(tmp_path / 'c'), cfg)


def _llama_style_tokenizer(texts):
  """A sentencepiece model with Llama's special ids (unk 0, bos 1, eos 2, no pad)."""
  import io  # pylint: disable=g-import-not-at-top
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  proto = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=proto,
                                 vocab_size=40, model_type='char', unk_id=0, bos_id=1, eos_id=2,
                                 pad_id=-1, hard_vocab_limit=False, minloglevel=2,
                                 add_dummy_prefix=False)
  return Tokenizer(proto.getvalue())


def test_tokenizer_beside_the_checkpoint_keeps_its_special_ids(tmp_path):
  tokenizer = _llama_style_tokenizer(['0123456789+=abcdefghij'])
  tokenizer.save(str(tmp_path))
  loaded = Tokenizer.load(str(tmp_path))
  assert (loaded.unk_id, loaded.bos_id, loaded.eos_id, loaded.pad_id) == (0, 1, 2, 0)
  ids = loaded.encode('12+34=', bos=True, eos=True)
  assert ids[0] == 1 and ids[-1] == 2 and loaded.decode(ids) == '12+34='


def test_main_job_starts_from_an_hf_checkpoint(tmp_path):
  """--config.init_from_hf: the architecture, weights and tokenizer of the checkpoint are the
  start of the run (here the SFT demo, on a Llama with a task tokenizer beside it)."""
  config = sft_reverse.get_config()
  task = experiment.make_task(config)
  tokenizer = _llama_style_tokenizer([task.alphabet()])
  hf_model = _hf_model('llama', vocab_size=tokenizer.vocab_size)
  hf_dir = str(tmp_path / 'hf')
  hf_model.save_pretrained(hf_dir)
  with config.unlocked():
    config.workdir = str(tmp_path / 'run')
    config.init_from_hf = hf_dir
    config.train.num_steps, config.train.batch_size, config.train.eval_size = 2, 8, 8
    config.checkpoint.async_save = False
  hf.apply_to_config(config, hf_dir)
  with pytest.raises(FileNotFoundError, match='no sentencepiece tokenizer.model'):
    experiment.setup(config, total_steps=2)
  tokenizer.save(hf_dir)
  exp, state = experiment.setup(config, total_steps=2)
  assert exp.model.cfg == hf.load_config(hf_dir)
  assert exp.tokenizer.model_proto == tokenizer.model_proto
  tokens, mask = _padded_batch()
  tokens, real = tokens % tokenizer.vocab_size, mask.astype(bool)
  np.testing.assert_allclose(_our_logits(exp.model.cfg, state.params, tokens, mask)[real],
                             _hf_logits(hf_model, tokens, mask)[real], atol=1e-4)
  exp.ckpt.close()
  with config.unlocked():
    config.workdir = str(tmp_path / 'run2')
  si_main.run(config)  # The whole job, from the command line's entry point.
  exported = export.export_run(str(tmp_path / 'run2'), str(tmp_path / 'out'))  # And back out.
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
  trained = experiment.load_params(str(tmp_path / 'run2'), exp.model.cfg, exp.shardings.params)
  np.testing.assert_allclose(_hf_logits(reloaded, tokens, mask)[real],
                             _our_logits(exp.model.cfg, trained, tokens, mask)[real], atol=1e-4)
  assert Tokenizer.load(exported).model_proto == tokenizer.model_proto

"""The sampler: exactness vs full recompute, padding/batch/mesh invariance, strategies, stops."""

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from si_jax import layout, models, sampling, sharding
from si_jax.sampling import strategies
from si_jax.tokenizers import Tokenizer
from tests.helpers import tiny_model_config

PROMPTS = [[2, 5, 6, 7, 8, 9, 10], [2, 11], [2, 12, 13, 14]]


@pytest.fixture(scope='module')
def model_and_params():
  cfg = tiny_model_config()
  return models.build(cfg, jax.random.PRNGKey(0))


@pytest.fixture(scope='module')
def sampler(model_and_params):
  return sampling.Sampler(model_and_params[0])


def _greedy_by_recompute(model, params, prompt, steps):
  forward = jax.jit(models.forward, static_argnums=0)
  seq = list(prompt)
  for _ in range(steps):
    seq.append(int(jnp.argmax(forward(model, params, jnp.asarray([seq]))[0, -1])))
  return seq[len(prompt):]


def test_greedy_with_cache_equals_full_recompute(model_and_params, sampler):
  model, params = model_and_params
  out = sampler.sample(params, PROMPTS, max_new_tokens=12, eos_id=-1)
  for i, prompt in enumerate(PROMPTS):
    assert list(out.tokens[i]) == _greedy_by_recompute(model, params, prompt, 12)
  assert (out.finish_reason == sampling.FINISH_REASONS.index('length')).all()
  assert (out.lengths == 12).all()


def _loop_body_text(hlo: str) -> str:
  """The HLO text of what the module's while loop runs each step: its body computation and
  every computation the body calls, transitively."""
  computations = dict(re.findall(r'^(?:ENTRY )?%(\S+) .*? \{\n(.*?)^\}', hlo, re.M | re.S))
  todo, seen = re.findall(r'while\(.*?body=%([^,\s]+)', hlo), set()
  while todo:
    name = todo.pop()
    if name not in seen:
      seen.add(name)
      todo += re.findall(r'(?:calls|to_apply|body|condition)=%([^,\s}]+)', computations[name])
  return '\n'.join(computations[name] for name in seen)


@pytest.mark.parametrize('output_major', [False, True])
def test_decode_step_reads_cache_and_weights_in_place(model_and_params, output_major):
  """No decode step copies a cache-sized or weight-sized array: such a copy, every token, costs
  as much memory traffic as the step's own math. (A [B, S, K, H] cache was transposed in full
  and the o projection re-laid out every step.) The output-major weights are made once per
  call, before the loop. B = 2: at B = 1 XLA still copies the cache (the unit batch dim is
  bitcast away), a known, measured leftover."""
  model, params = model_and_params
  sampler = sampling.Sampler(model)
  b, prompt_len, max_new = 2, 8, 8
  tokens, mask = layout.left_pad([[2, 3]] * b, prompt_len)
  last, pos, cache = sampler._prefill(model, params, jnp.asarray(tokens), jnp.asarray(mask),
                                      prompt_len + max_new)
  hlo = sampler._decode[True].lower(
      model, strategies.Greedy(), 1, max_new, -1, (), params, last, pos, jnp.ones(b, bool), cache,
      jnp.arange(b, dtype=jnp.int32), jnp.int32(max_new),
      output_major=output_major).compile().as_text()
  body = _loop_body_text(hlo)
  assert len(body) > len(hlo) / 4, 'the loop body was not found: fix _loop_body_text'
  copies = collections.Counter(re.findall(r'= f32\[([\d,]+)\]\S* (?:copy|transpose)\(', body))
  size = lambda dims: int(np.prod([int(d) for d in dims.split(',')]))
  smallest = min([cache.k[0].size] + [x.size for x in jax.tree.leaves(params) if x.ndim >= 2])
  assert copies, 'no copies at all: the HLO pattern no longer matches, fix the test'
  assert not {d: c for d, c in copies.items() if size(d) >= smallest}, copies
  outside = collections.Counter(re.findall(r'= f32\[([\d,]+)\]\S* (?:copy|transpose)\(', hlo))
  if output_major:  # The transposed weights are there, made before the loop.
    assert sum(c for d, c in outside.items() if size(d) >= smallest) >= model.cfg.num_layers * 7


@pytest.mark.parametrize('strategy', [strategies.Greedy(), strategies.Temperature(1.0)])
def test_batch_equals_each_prompt_alone(sampler, model_and_params, strategy):
  """Padding is invisible; seeded sampling draws the same per row (rows keyed by position)."""
  params = model_and_params[1]
  batched = sampler.sample(params, PROMPTS, max_new_tokens=8, strategy=strategy, seed=3)
  for i, prompt in enumerate(PROMPTS):
    alone = sampler.sample(params, [prompt], max_new_tokens=8, strategy=strategy, seed=3 + i)
    np.testing.assert_allclose(batched.logprobs[i], alone.logprobs[0], atol=1e-5)
    np.testing.assert_array_equal(batched.tokens[i], alone.tokens[0])


@pytest.mark.parametrize('strategy', [strategies.Greedy(), strategies.TopK(k=8, temperature=1.0)])
def test_mesh_sampling_equals_single_device(model_and_params, strategy):
  """Sharded sampling, and output-major decoding (models.output_major), sharded or not, sample
  what one device does."""
  model, params = model_and_params
  single = sampling.Sampler(model, sharding.make_mesh({}, jax.devices()[:1]))
  meshed = sampling.Sampler(model, sharding.make_mesh({'data': 2, 'tensor': 4}))
  fsdp = sampling.Sampler(model, sharding.make_mesh({'fsdp': 2, 'tensor': 4}), sharding.RULES)
  output_major = [sampling.Sampler(model, mesh, output_major=True)
                  for mesh in (None, sharding.make_mesh({'data': 2, 'tensor': 4}))]
  kwargs = dict(max_new_tokens=8, strategy=strategy, n=2, seed=5)
  ref = single.sample(params, PROMPTS, **kwargs)
  for s in [meshed, fsdp] + output_major:
    out = s.sample(params, PROMPTS, **kwargs)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)


def test_top_k_1_is_greedy(sampler, model_and_params):
  params = model_and_params[1]
  greedy = sampler.sample(params, PROMPTS, max_new_tokens=8)
  top1 = sampler.sample(params, PROMPTS, max_new_tokens=8, strategy=strategies.TopK(k=1), seed=9)
  np.testing.assert_array_equal(top1.tokens, greedy.tokens)


def test_logprobs_equal_scoring_function(sampler, model_and_params):
  model, params = model_and_params
  out = sampler.sample(params, PROMPTS, max_new_tokens=10, strategy=strategies.Temperature(1.5),
                       n=2, seed=1)
  completions = [list(t[:n]) for t, n in zip(out.tokens, out.lengths)]
  prompts = [PROMPTS[i // 2] for i in range(len(completions))]
  logp, entropy, mask = sampling.score(model, params, prompts, completions)
  np.testing.assert_allclose(logp, out.logprobs[:, :logp.shape[1]], atol=1e-5)
  np.testing.assert_allclose(logp.sum(1), out.logprobs.sum(1), atol=1e-4)
  assert (entropy[mask] > 0).all() and (entropy[~mask] == 0).all()


def test_sampled_frequencies_match_softmax(sampler, model_and_params):
  """Chi-square: first tokens of 4096 samples follow softmax(logits / T)."""
  model, params = model_and_params
  temperature = 1.7
  out = sampler.sample(params, [PROMPTS[1]], max_new_tokens=1, n=4096,
                       strategy=strategies.Temperature(temperature), seed=0)
  logits = jax.jit(models.forward, static_argnums=0)(model, params, jnp.asarray([PROMPTS[1]]))
  probs = np.asarray(jax.nn.softmax(logits[0, -1] / temperature), np.float64)
  probs /= probs.sum()
  counts = np.bincount(out.tokens[:, 0], minlength=probs.size)
  common = probs * counts.sum() >= 5
  expected = probs * counts.sum()  # pool rare tokens into one cell.
  observed, expected = counts[common], expected[common]
  if (~common).any():
    observed = np.append(observed, counts[~common].sum())
    expected = np.append(expected, probs[~common].sum() * counts.sum())
  assert stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.parametrize('strategy', [strategies.TopP(p=0.5, temperature=1.0),
                                      strategies.MinP(p=0.3, temperature=1.0)])
def test_truncation_never_emits_excluded_tokens(sampler, model_and_params, strategy):
  model, params = model_and_params
  out = sampler.sample(params, [PROMPTS[1]], max_new_tokens=1, n=512, strategy=strategy, seed=2)
  logits = jax.jit(models.forward, static_argnums=0)(model, params, jnp.asarray([PROMPTS[1]]))
  probs = np.asarray(jax.nn.softmax(logits[0, -1]))
  order = np.argsort(-probs)
  if isinstance(strategy, strategies.TopP):
    before = np.cumsum(probs[order]) - probs[order]
    allowed = set(order[before < strategy.p].tolist())
  else:
    allowed = set(np.nonzero(probs >= strategy.p * probs.max())[0].tolist())
  emitted = set(out.tokens[:, 0].tolist())
  assert emitted <= allowed
  assert len(emitted) > 1 or len(allowed) == 1
  # Sampling logprobs are renormalised over the kept set.
  kept = np.asarray(sorted(allowed))
  renorm = np.log(probs[out.tokens[:, 0]] / probs[kept].sum())
  np.testing.assert_allclose(out.sampling_logprobs[:, 0], renorm, atol=1e-4)


def test_eos_and_stop_sequences_end_exactly_the_right_rows(sampler, model_and_params):
  params = model_and_params[1]
  free = sampler.sample(params, PROMPTS, max_new_tokens=12, eos_id=-1)
  # Pick, per row, tokens it will generate, and check each rule ends that row at that point.
  eos = int(free.tokens[0, 4])
  by_eos = sampler.sample(params, PROMPTS, max_new_tokens=12, eos_id=eos)
  first = [list(row).index(eos) if eos in row else None for row in free.tokens]
  for i, f in enumerate(first):
    if f is None:
      assert by_eos.finish_reason[i] == 3 and by_eos.lengths[i] == 12
    else:
      assert by_eos.finish_reason[i] == 1 and by_eos.lengths[i] == f + 1
      assert (by_eos.tokens[i, f + 1:] == 0).all()
  stop = [int(t) for t in free.tokens[1, 5:7]]
  by_stop = sampler.sample(params, PROMPTS, max_new_tokens=12, eos_id=-1, stop_sequences=[stop])
  for i, row in enumerate(free.tokens.tolist()):
    ends = [j + 2 for j in range(11) if row[j:j + 2] == stop]
    if ends:
      assert by_stop.finish_reason[i] == 2 and by_stop.lengths[i] == ends[0]
    else:
      assert by_stop.finish_reason[i] == 3
  np.testing.assert_array_equal(by_stop.tokens[1, :7], free.tokens[1, :7])


def test_n_samples_are_independent(sampler, model_and_params):
  params = model_and_params[1]
  out = sampler.sample(params, [PROMPTS[1]], max_new_tokens=6, n=16,
                       strategy=strategies.Temperature(2.0), seed=4)
  assert len({tuple(r) for r in out.tokens.tolist()}) > 8  # copies of one prompt differ.
  again = sampler.sample(params, [PROMPTS[1]], max_new_tokens=6, n=16,
                         strategy=strategies.Temperature(2.0), seed=4)
  np.testing.assert_array_equal(again.tokens, out.tokens)  # ... and are reproducible per seed.


def test_text_api_and_recompilation_cache(sampler, model_and_params):
  params = model_and_params[1]
  tok = Tokenizer.train(['abcdefghijklmnopqrstuvwxyz'], 32)
  texts, out = sampler.generate(params, tok, ['abc', 'de'], max_new_tokens=5, n=2,
                                strategy=strategies.Temperature(1.0))
  assert len(texts) == 2 and all(len(t) == 2 for t in texts)
  assert out.tokens.shape == (4, 5)
  before = sampler._decode[False]._cache_size()
  sampler.generate(params, tok, ['xyz', 'ab'], max_new_tokens=6, n=2,
                   strategy=strategies.Temperature(1.0))  # same buckets: no new compile.
  assert sampler._decode[False]._cache_size() == before


@pytest.mark.parametrize('kwargs, message', [
    (dict(prompts=[]), 'empty'),
    (dict(prompts=[[]]), 'empty'),
    (dict(n=0), 'n=0'),
    (dict(prompts=[[2, 99]]), 'vocab'),
    (dict(max_cache_len=8), 'cache length'),
])
def test_bad_input_fails_with_its_name(sampler, model_and_params, kwargs, message):
  args = dict(prompts=PROMPTS, max_new_tokens=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    sampler.sample(model_and_params[1], args.pop('prompts'), **args)


@pytest.mark.parametrize('make, message', [
    (lambda: strategies.Temperature(-1.0), 'temperature'),
    (lambda: strategies.TopP(p=0.0), 'top_p'),
    (lambda: strategies.TopP(p=1.5), 'top_p'),
    (lambda: strategies.TopK(k=0), 'top_k'),
])
def test_bad_strategy_fails_with_its_name(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_tokenizer_model_mismatch(sampler, model_and_params):
  big = Tokenizer.train([''.join(chr(c) for c in range(0x4e00, 0x4e40))], 128)
  with pytest.raises(ValueError, match='vocab_size'):
    sampler.generate(model_and_params[1], big, ['x'], max_new_tokens=2)

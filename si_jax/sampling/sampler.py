"""Sampling with a KV cache: a jitted prefill, then a jitted `lax.while_loop` decode.

Layout of one call (hidden from callers):
  * prompts are left-padded to a bucketed length P, so every sequence writes its next token to
    the same cache slot; RoPE positions count only a sequence's real tokens, so padding changes
    nothing a sequence computes (tested: a batch == each prompt alone);
  * the B prompts are prefilled once; for n samples per prompt the cache is copied n times
    (rows b*n .. b*n+n-1 belong to prompt b), never prefilled n times;
  * cache slots [0, P) hold prompts, [P, P + max_new) the generation.
Prefill and decode are compiled separately and cached per (bucketed) shape, strategy, n and
stop sequences, so a loop of calls compiles a handful of programs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from si_jax import models, sharding
from si_jax.layout import bucket, left_pad, positions
from si_jax.sampling.strategies import Greedy, Strategy
from si_jax.tokenizers import Tokenizer

FINISH_REASONS = ('running', 'eos', 'stop', 'length')  # finish_reason codes 0..3.


@flax.struct.dataclass
class SampleOutput:
  """Per sample (rows b*n .. b*n+n-1 belong to prompt b); arrays are numpy on return.

  tokens: [R, max_new] generated ids, pad (0) after the sequence ended; eos / stop tokens kept.
  lengths: [R] generated tokens including the eos or stop sequence.
  finish_reason: [R] index into FINISH_REASONS.
  logprobs: [R, max_new] log p(token) under the unmodified model (0 after the end): what
    policy-gradient ratios need.
  sampling_logprobs: [R, max_new] log-prob under the distribution sampled from (after
    temperature / top-k / top-p / min-p; 0 for greedy).
  """
  tokens: jax.Array
  lengths: jax.Array
  finish_reason: jax.Array
  logprobs: jax.Array
  sampling_logprobs: jax.Array


def empty_output(rows: int, max_new: int) -> SampleOutput:
  zeros = lambda dtype, *shape: jnp.zeros(shape, dtype)  # Distinct buffers: each can be donated.
  return SampleOutput(tokens=zeros(jnp.int32, rows, max_new), lengths=zeros(jnp.int32, rows),
                      finish_reason=zeros(jnp.int32, rows),
                      logprobs=zeros(jnp.float32, rows, max_new),
                      sampling_logprobs=zeros(jnp.float32, rows, max_new))


def row_keys_of(seeds_R, samples_R):
  """Sample j of a prompt with seed s draws from fold_in(PRNGKey(s), j), step t from
  fold_in(that, t): a row samples the same whatever else shares its batch (or its decoder)."""
  return jax.vmap(jax.random.fold_in)(jax.vmap(jax.random.PRNGKey)(seeds_R), samples_R)


@dataclasses.dataclass(frozen=True)
class StepPicker:
  """One decode step's choice for every row: the token, its log-probs, and whether the row ends
  (eos, a stop sequence, or its last step). Shared by the static and the paged decoders, so
  both end rows by the same rules."""
  strategy: Strategy
  eos_id: int
  stop_seqs: tuple[tuple[int, ...], ...]

  @property
  def width(self) -> int:
    return max([len(s) for s in self.stop_seqs] + [1])

  def no_recent(self, rows: int):
    """The last-W-tokens window of rows that have generated nothing yet."""
    return jnp.full((rows, self.width), -1, jnp.int32)

  def __call__(self, logits_RxV, row_keys_R, step_R, live_R, recent_RxW, last_step_R):
    """(token, model logp, sampling logp, recent window, finish reason); 0s on rows not live."""
    width = self.width
    # Stop sequences right-aligned in a [S, W] table; -2 never matches a token.
    stop_table = np.full((max(len(self.stop_seqs), 1), width), -2, np.int32)
    stop_valid = np.zeros((max(len(self.stop_seqs), 1), width), bool)
    for i, s in enumerate(self.stop_seqs):
      stop_table[i, width - len(s):], stop_valid[i, width - len(s):] = s, True
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, 0 if jnp.ndim(step_R) else None))
    token, sampling_logp = self.strategy.sample(logits_RxV, fold(row_keys_R, step_R))
    model_logp = jnp.take_along_axis(jax.nn.log_softmax(logits_RxV.astype(jnp.float32), -1),
                                     token[:, None], axis=-1)[:, 0]
    token = jnp.where(live_R, token, 0)
    recent = jnp.concatenate([recent_RxW[:, 1:], token[:, None]], axis=1)
    hit_stop = jnp.any(jnp.all((recent[:, None, :] == stop_table[None]) | ~stop_valid[None],
                               axis=-1) & stop_valid.any(-1)[None], axis=-1) & live_R
    hit_eos = (token == self.eos_id) & live_R
    at_limit = last_step_R & live_R & ~hit_eos & ~hit_stop
    reason = jnp.where(hit_eos, 1, jnp.where(hit_stop, 2, jnp.where(at_limit, 3, 0)))
    return (token, jnp.where(live_R, model_logp, 0.0), jnp.where(live_R, sampling_logp, 0.0),
            recent, reason)


@flax.struct.dataclass
class _DecodeState:
  cache: models.KVCache
  logits_RxV: jax.Array  # next-token logits of each row
  position_R: jax.Array  # RoPE position of the next token
  recent_RxW: jax.Array  # last W generated tokens (for stop sequences), -1 = none yet
  out: SampleOutput
  done_R: jax.Array
  step: jax.Array


def _prefill(model: models.Model, params, tokens_BxP, mask_BxP, cache_len: int, cache_sharding):
  b = tokens_BxP.shape[0]
  cache = models.init_cache(model.cfg, b, cache_len)
  if cache_sharding is not None:
    cache = jax.lax.with_sharding_constraint(cache, cache_sharding)
  positions_BxP = positions(mask_BxP)
  logits, cache = models.forward_with_cache(model, params, tokens_BxP, positions_BxP, mask_BxP,
                                           cache)
  return logits[:, -1], positions_BxP[:, -1] + 1, cache


def _decode(model: models.Model, strategy: Strategy, n: int, max_new: int, eos_id: int,
            stop_seqs: tuple[tuple[int, ...], ...], params, last_logits_BxV, next_pos_B,
            active_B, cache: models.KVCache, seeds_B, limit, *, output_major: bool):
  """Decodes up to `limit` (<= max_new, the buffer size) tokens for n copies of each prompt.

  Rows draw from `row_keys_of` keys: a prompt samples the same whatever else is in the batch.
  output_major: run the decode matmuls output-major (`models.output_major`, made once here,
  outside the loop).
  """
  repeat = lambda x: jnp.repeat(x, n, axis=0)
  row_keys = row_keys_of(repeat(seeds_B), jnp.tile(jnp.arange(n), seeds_B.shape[0]))
  if n > 1:  # Copy each prompt's cache n times.
    cache = cache.replace(k=[repeat(k) for k in cache.k], v=[repeat(v) for v in cache.v],
                          valid_BxS=repeat(cache.valid_BxS))
  rows = last_logits_BxV.shape[0] * n
  out_major = models.output_major(model.cfg, params) if output_major else None
  pick = StepPicker(strategy, eos_id, stop_seqs)
  state = _DecodeState(
      cache=cache, logits_RxV=repeat(last_logits_BxV), position_R=repeat(next_pos_B),
      recent_RxW=pick.no_recent(rows), out=empty_output(rows, max_new),
      done_R=~repeat(active_B), step=jnp.zeros((), jnp.int32))

  def cond(s: _DecodeState):
    return (s.step < limit) & ~jnp.all(s.done_R)

  def body(s: _DecodeState):
    live = ~s.done_R
    token, model_logp, sampling_logp, recent, reason = pick(
        s.logits_RxV, row_keys, s.step, live, s.recent_RxW, s.step + 1 == limit)
    out = s.out
    out = SampleOutput(
        tokens=out.tokens.at[:, s.step].set(token),
        lengths=out.lengths + live.astype(jnp.int32),
        finish_reason=jnp.where(reason > 0, reason, out.finish_reason),
        logprobs=out.logprobs.at[:, s.step].set(model_logp),
        sampling_logprobs=out.sampling_logprobs.at[:, s.step].set(sampling_logp))
    logits, cache = models.forward_with_cache(model, params, token[:, None],
                                              s.position_R[:, None], live[:, None], s.cache,
                                              out_major)
    return _DecodeState(cache=cache, logits_RxV=logits[:, -1], position_R=s.position_R + 1,
                        recent_RxW=recent, out=out, done_R=s.done_R | (reason == 1) | (reason == 2),
                        step=s.step + 1)

  final = jax.lax.while_loop(cond, body, state)
  return final.out, final.cache  # Returning the cache lets a donated input alias it in place.


def decode_output_major(setting: bool | None, cfg: models.TransformerConfig, rows: int) -> bool:
  """Whether a decode of `rows` rows runs output-major (`models.output_major`).

  setting True / False: always / never. None: where it measured faster, on the CPU only: 2 to
  32 rows of a model with d_model >= 128 (1.2-1.6x). One row, 64 or more rows and a d = 64
  model gained nothing (within +-4%); experiments/benchmarks/README.md has the numbers.
  """
  if setting is not None:
    return setting
  return jax.default_backend() == 'cpu' and 1 < rows < 64 and cfg.d_model >= 128


def check_request(vocab: int, prompts, max_new_tokens: int, n: int,
                  max_cache_len: int | None = None):
  """Fails on a request no sampler can serve, naming the argument."""
  if len(prompts) == 0:
    raise ValueError('sample: the prompt list is empty')
  if any(len(p) == 0 for p in prompts):
    raise ValueError('sample: a prompt is empty; encode prompts with bos=True')
  if n < 1:
    raise ValueError(f'sample: n={n} must be >= 1')
  if max_new_tokens < 1:
    raise ValueError(f'sample: max_new_tokens={max_new_tokens} must be >= 1')
  longest = max(len(p) for p in prompts)
  if max_cache_len is not None and longest + max_new_tokens > max_cache_len:
    raise ValueError(f'sample: the longest prompt ({longest} tokens) + max_new_tokens '
                     f'({max_new_tokens}) exceeds the cache length {max_cache_len}')
  bad = [t for p in prompts for t in p if not 0 <= t < vocab]
  if bad:
    raise ValueError(f'sample: token id {bad[0]} is outside the model vocab [0, {vocab}): '
                     f'the tokenizer does not match the model')


@dataclasses.dataclass
class Sampler:
  """Generates from split params of `model`, optionally sharded over `mesh`.

  rules: logical -> mesh rules for the weights while sampling. The default
  `sharding.SAMPLING_RULES` keeps weights tensor-parallel only (no FSDP all-gather per token);
  pass `sharding.RULES` to sample straight from FSDP-sharded training params.
  output_major: decode with the blocks' weights copied output-major (`models.dense`): 1.4-1.6x
  faster decoding of REF-25M at B = 4-16 on CPU, for a second copy of those weights while
  sampling. True / False: always / never; None (default): where it pays, see
  `decode_output_major`.
  """
  model: models.Model
  mesh: Mesh | None = None
  rules: dict | None = None
  output_major: bool | None = None

  def __post_init__(self):
    self.rules = sharding.SAMPLING_RULES if self.rules is None else self.rules
    self._prefill = jax.jit(functools.partial(_prefill, cache_sharding=self._cache_sharding()),
                            static_argnums=(0, 4))
    # The prefill cache is donated to decode when decode can reuse it in place (n == 1).
    self._decode = {donate: jax.jit(_decode, static_argnums=(0, 1, 2, 3, 4, 5),
                                    static_argnames='output_major',
                                    donate_argnums=(10,) if donate else ())
                    for donate in (True, False)}
    self._param_shardings = None
    if self.mesh is not None:
      _, abstract = models.abstract_model(self.model.cfg)
      self._param_shardings = sharding.named_shardings(
          models.logical_axes(self.model.cfg), abstract, self.mesh, self.rules)

  # --- Placement -------------------------------------------------------------------------------

  def place_params(self, params):
    """Puts params in the sampling layout (a no-op when they already are)."""
    if self.mesh is None:
      return params
    return jax.device_put(params, self._param_shardings)

  def _data_size(self) -> int:
    if self.mesh is None:
      return 1
    return math.prod(self.mesh.shape[a] for a in ('data', 'fsdp'))

  def _cache_sharding(self):
    if self.mesh is None:
      return None
    spec = lambda *axes: NamedSharding(self.mesh, sharding.logical_to_spec(
        axes, None, self.mesh, self.rules))
    kv = spec('batch', 'kv_heads', None, 'head_dim')
    layers = self.model.cfg.num_layers
    return models.KVCache(k=[kv] * layers, v=[kv] * layers, valid_BxS=spec('batch', None),
                          index=spec())

  def _put_batch(self, x):
    if self.mesh is None:
      return jnp.asarray(x)
    return jax.device_put(x, sharding.batch_sharding(self.mesh, np.ndim(x), self.rules))

  # --- Token API -------------------------------------------------------------------------------

  def sample(self, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             strategy: Strategy = Greedy(), n: int = 1, seed: int = 0, eos_id: int = 3,
             stop_sequences: Sequence[Sequence[int]] = (), max_cache_len: int | None = None
             ) -> SampleOutput:
    """Samples `n` completions per token-id prompt. Rows b*n .. b*n+n-1 belong to prompt b.

    Prompt b samples with seed `seed + b`, so the same prompt and seed give the same samples
    alone or in any batch.
    """
    check_request(self.model.cfg.vocab_size, prompts, max_new_tokens, n, max_cache_len)
    prompt_len = bucket(max(len(p) for p in prompts))
    max_new = bucket(max_new_tokens)
    # Pad the batch to a bucketed size divisible by the data-parallel axes; drop the extras after.
    b = len(prompts)
    padded_b = bucket(b, minimum=1) if b <= 64 else -(-b // 64) * 64
    padded_b = -(-padded_b // self._data_size()) * self._data_size()
    tokens, mask = left_pad(list(prompts) + [[eos_id]] * (padded_b - b), prompt_len)
    params = self.place_params(params)
    last_logits, next_pos, cache = self._prefill(
        self.model, params, self._put_batch(tokens), self._put_batch(mask),
        prompt_len + max_new)
    stops = tuple(tuple(int(t) for t in s) for s in stop_sequences)
    active = self._put_batch(np.arange(padded_b) < b)
    decode = self._decode[n == 1]
    out, _ = decode(self.model, strategy, n, max_new, eos_id, stops, params, last_logits, next_pos,
                 active, cache, self._put_batch(seed + np.arange(padded_b, dtype=np.int32)),
                 jnp.int32(max_new_tokens),
                 output_major=decode_output_major(self.output_major, self.model.cfg, padded_b * n))
    trim = lambda x: x[:b * n, :max_new_tokens] if x.ndim == 2 else x[:b * n]
    return jax.tree.map(trim, jax.device_get(out))

  # --- Text API --------------------------------------------------------------------------------

  def generate(self, params, tokenizer: Tokenizer, prompts: Sequence[str], *,
               max_new_tokens: int, strategy: Strategy = Greedy(), n: int = 1, seed: int = 0,
               stop: Sequence[str] = (), max_cache_len: int | None = None):
    """Text in, text out: returns (texts [len(prompts)][n], the SampleOutput).

    Texts end before eos and before the first stop string (which the tokens keep).
    """
    tokenizer.check_model_vocab(self.model.cfg.vocab_size)
    if not prompts:
      raise ValueError('generate: the prompt list is empty')
    ids = tokenizer.encode_batch(prompts, bos=True)
    out = self.sample(params, ids, max_new_tokens=max_new_tokens, strategy=strategy, n=n,
                      seed=seed, eos_id=tokenizer.eos_id,
                      stop_sequences=[tokenizer.encode(s) for s in stop],
                      max_cache_len=max_cache_len)
    texts = []
    for row, length in zip(out.tokens, out.lengths):
      text = tokenizer.decode(row[:length])
      cuts = [text.find(s) for s in stop if s and s in text]
      texts.append(text[:min(cuts)] if cuts else text)
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))], out


def greedy_generate(model: models.Model, params, prompts: Sequence[Sequence[int]],
                    max_new_tokens: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Greedy completions of token-id prompts on the default device: (tokens, lengths)."""
  out = _default_sampler(model).sample(params, prompts, max_new_tokens=max_new_tokens,
                                       eos_id=eos_id)
  return out.tokens, out.lengths


@functools.lru_cache(maxsize=8)
def _default_sampler(model: models.Model) -> Sampler:
  return Sampler(model)

"""Paged KV cache and continuous batching, for rollouts of n samples per prompt (GRPO groups).

Why: a rollout's completions end at ragged lengths. The static `Sampler` decodes all B*n rows in
lockstep until the longest one ends, so a row that ended early keeps its share of every matmul
until then; it also copies each prompt's cache n times. Here
  * keys/values live in a pool of fixed-size pages per layer, [num_pages, K, page_size, H]. A
    row's cache is a list of pages (its page table): its prompt's pages, written by one prefill
    and shared by the n rows of the group, then pages of its own for what it generates;
  * a fixed number of decode slots run jitted chunks of up to `chunk` steps; between chunks a
    host scheduler frees the pages of rows that ended (eos / stop / length) and refills their
    slots with the next waiting rows, prefilling a prompt when its group's first row starts.
Attention gathers a row's pages into a contiguous [K, pages * page_size, H] view and masks the
slots that hold no token of the row (the tail of the prompt's last page, generation slots not
written yet), so each row computes the static sampler's math (tested to 1e-5). Page 0 is scratch:
idle slots and padding write there, and no mask lets it be read.

Output: a `SampleOutput` in the static sampler's row order (rows b*n .. b*n+n-1 are prompt b's),
with the same per-row random keys, so the two samplers are interchangeable for `rollout`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from si_jax import models
from si_jax.layout import bucket, right_pad
from si_jax.sampling.sampler import (SampleOutput, StepPicker, check_request, empty_output,
                                     decode_output_major, row_keys_of)
from si_jax.sampling.strategies import Greedy, Strategy


@flax.struct.dataclass
class PagedKV:
  """One layer's pages as one call sees them: where its T new tokens go, which pages it reads."""
  k_pages: jax.Array  # [num_pages, K, page_size, H]
  v_pages: jax.Array
  write_page_BxT: jax.Array  # page of each new token (0: scratch)
  write_offset_BxT: jax.Array  # slot within that page
  table_BxM: jax.Array  # the pages each row attends over, in order

  def update(self, k_BxKxTxH, v_BxKxTxH):
    """Writes this call's keys/values into their pages; returns each row's [B, K, M * page_size,
    H] view of its pages and the updated layer (the `models.DenseKV.update` contract)."""
    def write(pages, x_BxKxTxH):  # Advanced indices around ':' put [B, T] first: [B, T, K, H].
      return pages.at[self.write_page_BxT, :, self.write_offset_BxT].set(
          x_BxKxTxH.transpose(0, 2, 1, 3).astype(pages.dtype))

    def view(pages):
      x_BxMxKxPxH = pages[self.table_BxM]
      b, m, k, p, h = x_BxMxKxPxH.shape
      return x_BxMxKxPxH.transpose(0, 2, 1, 3, 4).reshape(b, k, m * p, h)

    k_pages, v_pages = write(self.k_pages, k_BxKxTxH), write(self.v_pages, v_BxKxTxH)
    return view(k_pages), view(v_pages), self.replace(k_pages=k_pages, v_pages=v_pages)


@flax.struct.dataclass
class Pool:
  """The page pool of every layer."""
  k: list[jax.Array]  # L x [num_pages, K, page_size, H]
  v: list[jax.Array]


@flax.struct.dataclass
class _Call:
  """A pool plus one call's write positions and page tables: the cache `Transformer` takes."""
  pool: Pool
  write_page_BxT: jax.Array
  write_offset_BxT: jax.Array
  table_BxM: jax.Array

  def layer(self, i: int) -> PagedKV:
    return PagedKV(self.pool.k[i], self.pool.v[i], self.write_page_BxT, self.write_offset_BxT,
                   self.table_BxM)


def init_pool(cfg: models.TransformerConfig, num_pages: int, page_size: int) -> Pool:
  shape = (num_pages, cfg.num_kv_heads, page_size, cfg.head_dim)
  return Pool(k=[jnp.zeros(shape, cfg.jnp_dtype) for _ in range(cfg.num_layers)],
              v=[jnp.zeros(shape, cfg.jnp_dtype) for _ in range(cfg.num_layers)])


def forward_paged(model: models.Model, params, pool: Pool, tokens_BxT, positions_BxT, mask_BxTxS,
                  write_page_BxT, write_offset_BxT, table_BxM, out_major=None):
  """The model's forward over paged keys/values: (logits [B, T, V], updated pool).

  mask_BxTxS indexes the gathered view: S = M * page_size, slot s of row b is slot s % page_size
  of page table_BxM[b, s // page_size]. out_major: as in `models.forward_with_cache`.
  """
  call = _Call(pool, write_page_BxT, write_offset_BxT, table_BxM)
  logits, layers = nnx.merge(model.graphdef, params)(tokens_BxT, positions_BxT, mask_BxTxS, call,
                                                     out_major)
  return logits, Pool(k=[x.k_pages for x in layers], v=[x.v_pages for x in layers])


def _prefill(model: models.Model, page_size: int, params, pool: Pool, prompt_logits_BxV,
             tokens_NxP, lengths_N, table_NxM, index_N):
  """Prefills N right-padded prompts into their pages; stores each one's last logits at
  prompt_logits_BxV[index_N] (an index >= B drops a padding prompt's)."""
  t_P = jnp.arange(tokens_NxP.shape[1])
  real_NxP = t_P[None] < lengths_N[:, None]
  write_page = jnp.where(real_NxP, table_NxM[:, t_P // page_size], 0)
  write_offset = jnp.broadcast_to(t_P % page_size, tokens_NxP.shape)
  s_S = jnp.arange(table_NxM.shape[1] * page_size)
  mask_NxPxS = ((s_S[None, None] <= t_P[None, :, None]) &  # causal, and only the real tokens
                (s_S[None, None] < lengths_N[:, None, None]))
  logits, pool = forward_paged(model, params, pool, tokens_NxP,
                               jnp.broadcast_to(t_P, tokens_NxP.shape), mask_NxPxS, write_page,
                               write_offset, table_NxM)
  last_NxV = logits[jnp.arange(tokens_NxP.shape[0]), lengths_N - 1]
  return pool, prompt_logits_BxV.at[index_N].set(last_NxV, mode='drop')


@flax.struct.dataclass
class _Slots:
  """The decoder's state, one entry per slot. A slot that is done writes nothing."""
  pool: Pool
  table_SxM: jax.Array  # prompt pages (prompt_pages columns), then the row's own pages
  prompt_len_S: jax.Array
  gen_len_S: jax.Array  # tokens generated so far: the next token's output column
  row_S: jax.Array  # output row
  key_S: jax.Array  # the row's key (`row_keys_of`)
  logits_SxV: jax.Array  # next-token logits
  recent_SxW: jax.Array
  done_S: jax.Array
  out: SampleOutput  # [R, max_new] for all rows
  steps: jax.Array  # decode steps run (each over all slots)


@flax.struct.dataclass
class _Admit:
  """What the host hands the decoder for the slots it refills (numpy, one entry per slot)."""
  mask_S: np.ndarray
  table_SxM: np.ndarray
  prompt_len_S: np.ndarray
  row_S: np.ndarray
  prompt_S: np.ndarray
  sample_S: np.ndarray
  seed_S: np.ndarray


def _chunk(model: models.Model, pick: StepPicker, page_size: int, prompt_pages: int, params,
           slots: _Slots, admit: _Admit, prompt_logits_BxV, limit, chunk, out_major):
  """Refills the admitted slots, then decodes until `chunk` steps ran or every slot is done.

  out_major: None or `models.output_major(model.cfg, params)`, made once per `sample` call."""
  where = lambda new, old: jnp.where(admit.mask_S.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)
  slots = slots.replace(
      table_SxM=where(admit.table_SxM, slots.table_SxM),
      prompt_len_S=where(admit.prompt_len_S, slots.prompt_len_S),
      gen_len_S=where(0, slots.gen_len_S), row_S=where(admit.row_S, slots.row_S),
      key_S=where(row_keys_of(admit.seed_S, admit.sample_S), slots.key_S),
      logits_SxV=where(prompt_logits_BxV[admit.prompt_S], slots.logits_SxV),
      recent_SxW=where(-1, slots.recent_SxW), done_S=where(False, slots.done_S))
  num_slots, width = slots.table_SxM.shape
  s_S = jnp.arange(width * page_size)
  prompt_part_S = s_S < prompt_pages * page_size

  def body(carry):
    i, s = carry
    live, col = ~s.done_S, s.gen_len_S
    token, model_logp, sampling_logp, recent, reason = pick(
        s.logits_SxV, s.key_S, col, live, s.recent_SxW, col + 1 == limit)
    row = jnp.where(live, s.row_S, s.out.lengths.shape[0])  # Out of range: dropped.
    put = lambda buf, x: buf.at[row, col].set(x, mode='drop')
    out = SampleOutput(tokens=put(s.out.tokens, token),
                       lengths=s.out.lengths.at[row].set(col + 1, mode='drop'),
                       finish_reason=s.out.finish_reason.at[row].set(reason, mode='drop'),
                       logprobs=put(s.out.logprobs, model_logp),
                       sampling_logprobs=put(s.out.sampling_logprobs, sampling_logp))
    own_page = s.table_SxM[jnp.arange(num_slots), prompt_pages + col // page_size]
    mask_SxS = jnp.where(prompt_part_S[None], s_S[None] < s.prompt_len_S[:, None],
                         s_S[None] - prompt_pages * page_size <= col[:, None])
    logits, pool = forward_paged(
        model, params, s.pool, token[:, None], (s.prompt_len_S + col)[:, None], mask_SxS[:, None],
        jnp.where(live, own_page, 0)[:, None], (col % page_size)[:, None], s.table_SxM,
        out_major)
    return i + 1, s.replace(pool=pool, gen_len_S=col + live, logits_SxV=logits[:, -1],
                            recent_SxW=recent, done_S=s.done_S | (reason > 0), out=out,
                            steps=s.steps + 1)

  cond = lambda carry: (carry[0] < chunk) & ~jnp.all(carry[1].done_S)
  return jax.lax.while_loop(cond, body, (jnp.int32(0), slots))[1]


@dataclasses.dataclass(frozen=True)
class PagedStats:
  """What the last `sample` call did: for tests and benchmarks."""
  decode_steps: int  # steps of the jitted decoder, each over all slots
  slot_steps_live: int  # (slot, step) pairs that produced a token
  prompts_prefilled: int  # prompt forward passes (one per prompt, however large n)
  prompt_pages: int  # pages written by prefill
  peak_pages: int  # most pages in use at once, scratch page included
  chunks: int  # host round trips


class _Scheduler:
  """Host-side bookkeeping between decode chunks: free pages, resident prompts, the row in each
  slot. Rows start in order (b*n + j); a prompt's pages are allocated (and prefilled) when its
  first row starts and freed when its last row ends; a row reserves pages for max_new_tokens."""

  def __init__(self, prompts, n: int, seed: int, num_pages: int, slots: int, page_size: int,
               prompt_pages: int, own_pages: int, width: int):
    self.prompts, self.n, self.seed, self.page_size = prompts, n, seed, page_size
    self.prompt_pages, self.own_pages = prompt_pages, own_pages
    self.num_pages = num_pages
    self.free = list(range(num_pages - 1, 0, -1))  # pop() takes the lowest page; 0 is scratch.
    self.pages_of_prompt: dict[int, list[int]] = {}  # resident prompts
    self.unfinished = [n] * len(prompts)  # rows of each prompt not yet ended
    self.waiting = collections.deque(range(len(prompts) * n))
    self.busy = np.zeros(slots, bool)
    self.own: list[list[int]] = [[] for _ in range(slots)]
    self.row_of = np.zeros(slots, np.int64)
    self.admit = _Admit(
        mask_S=np.zeros(slots, bool), table_SxM=np.zeros((slots, width), np.int32),
        prompt_len_S=np.ones(slots, np.int32), row_S=np.zeros(slots, np.int32),
        prompt_S=np.zeros(slots, np.int32), sample_S=np.zeros(slots, np.int32),
        seed_S=np.zeros(slots, np.int32))
    self.peak = 0

  def _pages(self, tokens: int) -> int:
    return -(-tokens // self.page_size)

  def fill(self) -> list[int]:
    """Starts waiting rows on idle slots while pages last (sets `admit`); returns the prompts
    that need a prefill."""
    admit, new_prompts = self.admit, []
    admit.mask_S[:] = False
    for s in np.flatnonzero(~self.busy):
      if not self.waiting:
        break
      r = self.waiting[0]
      p = r // self.n
      resident = p in self.pages_of_prompt
      need = self.own_pages + (0 if resident else self._pages(len(self.prompts[p])))
      if need > len(self.free):
        break
      self.waiting.popleft()
      if not resident:
        self.pages_of_prompt[p] = [self.free.pop() for _ in range(need - self.own_pages)]
        new_prompts.append(p)
      self.own[s] = [self.free.pop() for _ in range(self.own_pages)]
      prompt_pages = self.pages_of_prompt[p]
      admit.table_SxM[s] = 0
      admit.table_SxM[s, :len(prompt_pages)] = prompt_pages
      admit.table_SxM[s, self.prompt_pages:self.prompt_pages + self.own_pages] = self.own[s]
      admit.prompt_len_S[s], admit.row_S[s], admit.prompt_S[s] = len(self.prompts[p]), r, p
      admit.sample_S[s], admit.seed_S[s] = r % self.n, self.seed + p
      admit.mask_S[s] = self.busy[s] = True
      self.row_of[s] = r
    self.peak = max(self.peak, self.num_pages - len(self.free))
    if not self.busy.any() and self.waiting:  # Unreachable while num_pages passes its check.
      raise ValueError(f'PagedSampler: num_pages={self.num_pages} cannot hold one row')
    return new_prompts

  def release(self, done_S: np.ndarray):
    """Frees the slots (and pages) of rows that ended."""
    for s in np.flatnonzero(self.busy & done_S):
      self.busy[s] = False
      self.free.extend(self.own[s])
      p = self.row_of[s] // self.n
      self.unfinished[p] -= 1
      if self.unfinished[p] == 0:
        self.free.extend(self.pages_of_prompt.pop(p))


@dataclasses.dataclass
class PagedSampler:
  """Samples like `Sampler.sample` from a paged, continuously batched decoder.

  slots: rows decoded at once. page_size: tokens per page. num_pages: the pool, per layer
  (default: enough for every slot's longest row plus one prompt per slot). chunk: decode steps
  between host scheduling rounds (more: fewer round trips; fewer: ended rows wait less).
  output_major: as `Sampler.output_major`, for `slots` rows.
  """
  model: models.Model
  slots: int = 32
  page_size: int = 16
  num_pages: int | None = None
  chunk: int = 8
  output_major: bool | None = None
  stats: PagedStats | None = dataclasses.field(default=None, init=False)

  def __post_init__(self):
    for name in ('slots', 'page_size', 'chunk'):
      if getattr(self, name) < 1:
        raise ValueError(f'PagedSampler: {name}={getattr(self, name)} must be >= 1')
    self._prefill = jax.jit(_prefill, static_argnums=(0, 1), donate_argnums=(3, 4))
    self._chunk = jax.jit(_chunk, static_argnums=(0, 1, 2, 3), donate_argnums=(5,))
    self._output_major = jax.jit(models.output_major, static_argnums=0)

  def sample(self, params, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             strategy: Strategy = Greedy(), n: int = 1, seed: int = 0, eos_id: int = 3,
             stop_sequences: Sequence[Sequence[int]] = ()) -> SampleOutput:
    """`Sampler.sample`'s contract: n completions per prompt, rows b*n .. b*n+n-1 for prompt b,
    prompt b sampled with seed `seed + b`."""
    cfg, ps = self.model.cfg, self.page_size
    check_request(cfg.vocab_size, prompts, max_new_tokens, n)
    pages_of = lambda tokens: -(-tokens // ps)
    prompt_width, max_new = bucket(max(len(p) for p in prompts)), bucket(max_new_tokens)
    prompt_pages, own_pages = pages_of(prompt_width), pages_of(max_new_tokens)
    row_need = pages_of(max(len(p) for p in prompts)) + own_pages
    num_pages = self.num_pages or 1 + self.slots * row_need
    if num_pages < 1 + row_need:
      raise ValueError(
          f'PagedSampler: num_pages={num_pages} is too small: a row needs {row_need} pages '
          f'(its prompt, and max_new_tokens={max_new_tokens} at page_size={ps}) plus the '
          f'scratch page, so at least {1 + row_need}')
    rows, width = len(prompts) * n, prompt_pages + pages_of(max_new)
    pick = StepPicker(strategy, eos_id, tuple(tuple(int(t) for t in s) for s in stop_sequences))

    # --- Device state: the pool, idle slots, empty outputs ------------------------------------
    ints = lambda *shape: jnp.zeros(shape, jnp.int32)  # Distinct buffers: all are donated.
    slots = _Slots(
        pool=init_pool(cfg, num_pages, ps), table_SxM=ints(self.slots, width),
        prompt_len_S=ints(self.slots) + 1, gen_len_S=ints(self.slots), row_S=ints(self.slots),
        key_S=row_keys_of(ints(self.slots), ints(self.slots)),
        logits_SxV=jnp.zeros((self.slots, cfg.vocab_size), jnp.float32),
        recent_SxW=pick.no_recent(self.slots), done_S=jnp.ones((self.slots,), bool),
        out=empty_output(bucket(rows), max_new), steps=jnp.zeros((), jnp.int32))
    prompt_logits = jnp.zeros((bucket(len(prompts), minimum=1), cfg.vocab_size), jnp.float32)

    # --- Refill idle slots, decode a chunk, release ended rows; until every row ended ---------
    scheduler = _Scheduler(prompts, n, seed, num_pages, self.slots, ps, prompt_pages, own_pages,
                           width)
    prefilled = prompt_pages_written = chunks = 0
    out_major = (self._output_major(cfg, params)
                 if decode_output_major(self.output_major, cfg, self.slots) else None)
    while True:
      new_prompts = scheduler.fill()
      if new_prompts:
        pool, prompt_logits = self._prefill_prompts(params, slots.pool, prompt_logits, prompts,
                                                    new_prompts, prompt_width, prompt_pages,
                                                    scheduler.pages_of_prompt)
        slots = slots.replace(pool=pool)
        prefilled += len(new_prompts)
        prompt_pages_written += sum(len(scheduler.pages_of_prompt[p]) for p in new_prompts)
      if not scheduler.busy.any():
        break
      slots = self._chunk(self.model, pick, ps, prompt_pages, params, slots, scheduler.admit,
                          prompt_logits, jnp.int32(max_new_tokens), jnp.int32(self.chunk),
                          out_major)
      scheduler.release(np.asarray(slots.done_S))  # The one device -> host sync per chunk.
      chunks += 1
    out = jax.device_get(slots.out)
    out = jax.tree.map(lambda x: x[:rows, :max_new_tokens] if x.ndim == 2 else x[:rows], out)
    self.stats = PagedStats(decode_steps=int(slots.steps), slot_steps_live=int(out.lengths.sum()),
                            prompts_prefilled=prefilled, prompt_pages=prompt_pages_written,
                            peak_pages=scheduler.peak, chunks=chunks)
    return out

  def _prefill_prompts(self, params, pool, prompt_logits, prompts, which, prompt_width,
                       prompt_pages, pages_of_prompt):
    """One prefill of the prompts `which` (padded to a power-of-two count) into their pages."""
    count = bucket(len(which), minimum=1)
    pad = count - len(which)
    tokens, _ = right_pad([prompts[p] for p in which] + [[0]] * pad, prompt_width)
    table = np.zeros((count, prompt_pages), np.int32)
    for i, p in enumerate(which):
      table[i, :len(pages_of_prompt[p])] = pages_of_prompt[p]
    lengths = np.array([len(prompts[p]) for p in which] + [1] * pad, np.int32)
    index = np.array(list(which) + [prompt_logits.shape[0]] * pad, np.int32)
    return self._prefill(self.model, self.page_size, params, pool, prompt_logits, tokens,
                         lengths, table, index)

"""The paged, continuously batched sampler: the static sampler's output, with slots refilled and
each prompt's pages written once."""

import jax
import numpy as np
import pytest

from si_jax import models, sampling
from si_jax.sampling import paged, strategies
from tests.helpers import tiny_model_config

# Lengths 7, 2, 4, 11: four page counts at page_size 4, one prompt spanning three pages.
PROMPTS = [[2, 5, 6, 7, 8, 9, 10], [2, 11], [2, 12, 13, 14], [2] + list(range(3, 13))]
N, MAX_NEW, PAGE = 3, 12, 4


@pytest.fixture(scope='module')
def model_and_params():
  return models.build(tiny_model_config(), jax.random.PRNGKey(0))


@pytest.fixture(scope='module')
def static(model_and_params):
  return sampling.Sampler(model_and_params[0])


@pytest.fixture(scope='module')
def pager(model_and_params):
  """4 slots for 12 rows: every slot serves several rows."""
  return paged.PagedSampler(model_and_params[0], slots=4, page_size=PAGE, chunk=3)


def _assert_same(out, ref):
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.lengths, ref.lengths)
  np.testing.assert_array_equal(out.finish_reason, ref.finish_reason)
  np.testing.assert_allclose(out.logprobs, ref.logprobs, atol=1e-5)
  np.testing.assert_allclose(out.sampling_logprobs, ref.sampling_logprobs, atol=1e-5)


def test_greedy_equals_static_sampler(model_and_params, static, pager):
  """Prompts of 4 lengths, n = 3, and an eos that ends some rows early and not others."""
  params = model_and_params[1]
  free = static.sample(params, PROMPTS, max_new_tokens=MAX_NEW, n=N, eos_id=-1)
  eos = int(free.tokens[0, 4])
  ref = static.sample(params, PROMPTS, max_new_tokens=MAX_NEW, n=N, eos_id=eos)
  assert len(set(ref.lengths.tolist())) > 1, 'pick an eos that ends rows at different lengths'
  _assert_same(pager.sample(params, PROMPTS, max_new_tokens=MAX_NEW, n=N, eos_id=eos), ref)


def test_sampling_with_stops_equals_static_sampler_at_any_chunk(model_and_params, static, pager):
  """Same per-row keys, so temperature samples agree too; eos and a stop sequence both end rows.
  The chunk (steps between refills) changes when slots refill, never what a row samples; nor
  does decoding output-major."""
  params = model_and_params[1]
  kwargs = dict(max_new_tokens=MAX_NEW, n=N, eos_id=7, seed=4, stop_sequences=[[5, 6]],
                strategy=strategies.Temperature(1.0))
  ref = static.sample(params, PROMPTS, **kwargs)
  assert {1, 3} <= set(ref.finish_reason.tolist())
  for chunk, output_major in ((1, None), (3, None), (64, None), (3, True)):
    _assert_same(paged.PagedSampler(model_and_params[0], slots=4, page_size=PAGE, chunk=chunk,
                                    output_major=output_major).sample(params, PROMPTS, **kwargs),
                 ref)


def test_ended_rows_free_their_slots(model_and_params, pager):
  """12 ragged rows on 4 slots: slots are refilled as rows end, so the decoder runs fewer
  (slot, step) pairs than the static sampler's rows x longest row, and fewer steps than
  running the rows 4 at a time in lockstep would."""
  params = model_and_params[1]
  out = pager.sample(params, PROMPTS, max_new_tokens=MAX_NEW, n=N, eos_id=17, seed=4,
                     strategy=strategies.Temperature(1.0))
  stats = pager.stats
  assert out.lengths.sum() < 0.75 * len(out.lengths) * MAX_NEW, 'pick a more ragged eos'
  assert stats.slot_steps_live == out.lengths.sum()
  assert stats.decode_steps * 4 < len(out.lengths) * out.lengths.max()  # static's work
  lockstep = sum(out.lengths[i:i + 4].max() for i in range(0, len(out.lengths), 4))
  assert stats.decode_steps < lockstep
  assert stats.chunks > 1


def test_prompt_pages_are_written_once_per_group(model_and_params, pager):
  params = model_and_params[1]
  pager.sample(params, PROMPTS, max_new_tokens=MAX_NEW, n=N, eos_id=-1)
  stats = pager.stats
  assert stats.prompts_prefilled == len(PROMPTS)  # not len(PROMPTS) * N
  assert stats.prompt_pages == sum(-(-len(p) // PAGE) for p in PROMPTS)  # 2 + 1 + 1 + 3
  # At most 4 rows live, each with MAX_NEW / PAGE own pages; prompts are not copied per row.
  own = 4 * MAX_NEW // PAGE
  assert stats.peak_pages <= 1 + own + stats.prompt_pages


def test_a_tight_pool_still_serves_every_row(model_and_params, static):
  """A pool that fits one row at a time (3 prompt pages + 3 own + scratch) queues the rest."""
  model, params = model_and_params
  tight = paged.PagedSampler(model, slots=4, page_size=PAGE, num_pages=7, chunk=4)
  ref = static.sample(params, PROMPTS, max_new_tokens=MAX_NEW, n=2, eos_id=-1)
  _assert_same(tight.sample(params, PROMPTS, max_new_tokens=MAX_NEW, n=2, eos_id=-1), ref)
  assert tight.stats.peak_pages <= 7


@pytest.mark.parametrize('sampler_kwargs, sample_kwargs, message', [
    (dict(num_pages=6), {}, 'num_pages=6'),
    (dict(slots=0), {}, 'slots=0'),
    (dict(page_size=0), {}, 'page_size=0'),
    ({}, dict(n=0), 'n=0'),
    ({}, dict(prompts=[[2, 99]]), 'vocab'),
])
def test_bad_input_fails_with_its_name(model_and_params, sampler_kwargs, sample_kwargs, message):
  model, params = model_and_params
  args = dict(prompts=PROMPTS, max_new_tokens=MAX_NEW)
  args.update(sample_kwargs)
  with pytest.raises(ValueError, match=message):
    sampler = paged.PagedSampler(model, **dict(dict(page_size=PAGE), **sampler_kwargs))
    sampler.sample(params, args.pop('prompts'), **args)

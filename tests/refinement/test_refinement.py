"""Inference refinement: exact votes, best-of-N, and speculative decoding's exactness."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from si_jax import models, sampling, tasks
from si_jax.refinement import speculative, voting
from si_jax.sampling import strategies
from si_jax.tasks.arithmetic import AdditionTask
from si_jax.tokenizers import Tokenizer
from tests.helpers import tiny_model_config

TASK = AdditionTask()
PROMPT = [2, 5, 9, 7]


def test_majority_vote_exact():
  groups = [['12', '7', '12', 'junk', '7', '12'], ['x', 'y'], ['4', '5']]
  answers, shares = voting.self_consistency(TASK, groups)
  assert answers == ['12', None, '4']  # '4' vs '5' ties: the first seen wins.
  np.testing.assert_allclose(shares, [3 / 6, 0.0, 1 / 2])


def test_weighted_vote_exact():
  groups = [['12', '7', '12', '7'], ['3', '4']]
  weights = [[0.1, 0.5, 0.1, 0.2], [1.0, 2.0]]
  answers, shares = voting.self_consistency(TASK, groups, weights)
  assert answers == ['7', '4']
  np.testing.assert_allclose(shares, [0.7 / 0.9, 2 / 3], rtol=1e-6)


def test_sequence_weights_are_relative_probabilities():
  logprobs = np.asarray([[-500.0, -1.0], [-502.0, 0.0], [-1.0, -1.0], [-2.0, 0.0]])
  np.testing.assert_allclose(voting.sequence_weights(logprobs, 2),
                             [[1.0, np.exp(-1.0)], [1.0, 1.0]])


def test_best_of_n_picks_the_verifiers_best():
  groups = [['1', '2', '3'], ['9', '8']]
  problems = [tasks.Problem('a', '2', 1), tasks.Problem('b', '8', 1)]
  scores = [[TASK.verify(p, c) for c in g] for p, g in zip(problems, groups)]
  assert voting.best_of_n(groups, scores) == ['2', '8']
  assert voting.best_of_n([['a', 'b', 'c']], [[0.1, 0.9, 0.3]]) == ['b']


def test_end_to_end_helpers_report_compute():
  tok = Tokenizer.train([TASK.alphabet()], 32)
  model, params = models.build(tiny_model_config(vocab_size=tok.vocab_size),
                               jax.random.PRNGKey(0))
  sampler = sampling.Sampler(model)
  problems = TASK.generate(seed=0, n=2, difficulty=TASK.difficulties[0])
  kwargs = dict(n=4, strategy=strategies.Temperature(1.0), max_new_tokens=5, seed=1)
  sc = voting.self_consistency_answer(sampler, params, tok, TASK, problems, weighted=True,
                                      **kwargs)
  assert sc.samples == 8 and 0 < sc.generated_tokens <= 40 and len(sc.answers) == 2
  bon = voting.best_of_n_answer(sampler, params, tok, TASK, problems, **kwargs,
                                score_fn=lambda prompts, completions: np.asarray(
                                    [len(c) for c in completions], np.float32))
  assert bon.samples == 8 and len(bon.completions) == 2
  np.testing.assert_array_equal(bon.confidence, [len(c) for c in bon.completions])


@pytest.fixture(scope='module')
def target():
  return models.build(tiny_model_config(vocab_size=16), jax.random.PRNGKey(0))


@pytest.fixture(scope='module')
def other_draft():
  return models.build(tiny_model_config(vocab_size=16, num_layers=1), jax.random.PRNGKey(1))


@pytest.fixture(scope='module')
def target_greedy(target):
  model, params = target
  return sampling.Sampler(model).sample(params, [PROMPT], max_new_tokens=12, eos_id=-1)


@pytest.mark.parametrize('k,same_draft', [(1, False), (3, False), (3, True)])
def test_speculative_greedy_equals_target_greedy(target, other_draft, target_greedy, k,
                                                 same_draft):
  model, params = target
  draft = target if same_draft else other_draft
  expected = target_greedy
  out = speculative.speculative_decode(model, params, *draft, PROMPT, max_new_tokens=12, k=k,
                                       eos_id=-1)
  np.testing.assert_array_equal(out.tokens, expected.tokens[0])
  assert 0.0 <= out.acceptance_rate <= 1.0
  if same_draft:
    assert out.acceptance_rate == 1.0
    assert out.target_passes == -(-12 // (k + 1))


def test_plain_decode_equals_target_greedy(target, target_greedy):
  model, params = target
  plain = speculative.plain_decode(model, params, PROMPT, max_new_tokens=12, eos_id=-1)
  np.testing.assert_array_equal(plain.tokens, target_greedy.tokens[0])
  assert plain.target_passes == 12 and plain.drafted == 0


def test_speculative_stops_at_eos(target, other_draft, target_greedy):
  model, params = target
  greedy = target_greedy
  eos = int(greedy.tokens[0, 4])
  out = speculative.speculative_decode(model, params, *other_draft, PROMPT, max_new_tokens=12,
                                       k=3, eos_id=eos)
  first = list(greedy.tokens[0]).index(eos)
  np.testing.assert_array_equal(out.tokens, greedy.tokens[0, :first + 1])


def _chi_square_pvalue(counts, expected, min_expected=5.0):
  """Pearson chi-square, pooling cells with small expected counts into one."""
  counts, expected = np.ravel(counts).astype(float), np.ravel(expected).astype(float)
  small = expected < min_expected
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  keep = exp > 0
  return stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue


def test_speculative_sampling_matches_target_distribution(target, other_draft):
  """First token and second-given-first vs exact target probabilities (joint chi-square)."""
  model, params = target
  vocab, n_samples = model.cfg.vocab_size, 1200
  strategy = strategies.Temperature(1.0)
  pairs, rates = collections.Counter(), []
  for seed in range(n_samples):
    out = speculative.speculative_decode(model, params, *other_draft, PROMPT, max_new_tokens=2,
                                         k=2, strategy=strategy, seed=seed, eos_id=-1)
    pairs[tuple(out.tokens)] += 1
    rates.append(out.acceptance_rate)
  forward = jax.jit(models.forward, static_argnums=0)
  p_first_V = jax.nn.softmax(forward(model, params, jnp.asarray([PROMPT]))[0, -1])
  seqs_VxT = jnp.asarray([PROMPT + [a] for a in range(vocab)])
  p_second_VxV = jax.nn.softmax(forward(model, params, seqs_VxT)[:, -1], axis=-1)
  counts_VxV = np.zeros((vocab, vocab))
  for (a, b), c in pairs.items():
    counts_VxV[a, b] = c
  assert _chi_square_pvalue(counts_VxV.sum(1), n_samples * np.asarray(p_first_V)) > 1e-3
  joint_VxV = np.asarray(p_first_V)[:, None] * np.asarray(p_second_VxV)
  assert _chi_square_pvalue(counts_VxV, n_samples * joint_VxV) > 1e-3
  mean_rate = float(np.mean(rates))
  print(f'speculative acceptance rate (different draft): {mean_rate:.3f}')
  assert 0.0 < mean_rate < 1.0

"""Model-based rewards: the model as its own judge, and a Bradley–Terry reward model."""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from si_jax import models, tasks
from si_jax.models import reward_model as rm_lib
from si_jax.optimization import judge
from si_jax.optimization.train_step import make_train_step
from si_jax.tokenizers import Tokenizer
from si_jax.train_state import TrainState
from tests.helpers import tiny_model_config

LETTERS = 'abcdefghij'
forward = jax.jit(models.forward, static_argnums=0)  # Jitted references: eager ops compile slowly.


@pytest.fixture(scope='module')
def tokenizer():
  alphabet = LETTERS + '>' + judge.judge_alphabet() + 'yn'
  return Tokenizer.train([alphabet], vocab_size=64)


@pytest.fixture(scope='module')
def lm(tokenizer):
  return models.build(tiny_model_config(vocab_size=tokenizer.vocab_size), jax.random.PRNGKey(0))


def test_judge_alphabet():
  assert judge.judge_alphabet('{prompt}{completion}|ok?') == '|ok?'
  assert judge.judge_alphabet('Q:{prompt} A:{completion} ok?') == 'Q: Aok?'


def test_verdict_scores_match_forward_alone(tokenizer, lm):
  model, params = lm
  prompts, completions = ['ab>', 'abcdefgh>', 'c>', 'jihgfedcba>'], ['ba', 'x', '', 'abcdefghij']
  got = judge.verdict_scores(model, params, tokenizer, prompts, completions, yes='y', no='n')
  assert got.shape == (4,) and got.dtype == np.float32
  yes_id, no_id = tokenizer.encode('y')[0], tokenizer.encode('n')[0]
  for i, (p, c) in enumerate(zip(prompts, completions)):
    ids = tokenizer.encode(judge.JUDGE_TEMPLATE.format(prompt=p, completion=c), bos=True)
    logits = forward(model, params, jnp.asarray([ids]))[0, -1]
    probs = np.asarray(jax.nn.softmax(logits), np.float64)
    np.testing.assert_allclose(got[i], probs[yes_id] / (probs[yes_id] + probs[no_id]), atol=1e-5)


@pytest.mark.parametrize('yes,no', [('yy', 'n'), ('y', ''), ('y', 'y'), ('y', 'Z')])
def test_verdicts_must_be_single_known_tokens(tokenizer, lm, yes, no):
  model, params = lm
  with pytest.raises(ValueError, match='yes=|no='):
    judge.verdict_scores(model, params, tokenizer, ['a>'], ['a'], yes=yes, no=no)


def test_template_characters_must_be_in_vocab(tokenizer, lm):
  with pytest.raises(ValueError, match='judge_alphabet'):
    judge.judge_reward(*lm, tokenizer, yes='y', no='n', template='{prompt}{completion}#')


def test_judge_reward_callable(tokenizer, lm):
  model, params = lm
  fn = judge.judge_reward(model, params, tokenizer, yes='y', no='n')
  scores = fn(['ab>', 'abc>', 'a>'], ['ba', 'cba', 'b'], answer=['ba', 'cba', 'a'])
  assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
  passing = dataclasses.replace(fn, threshold=0.0)  # Everything passes.
  np.testing.assert_array_equal(passing(['ab>'], ['ba']), [1.0])
  zeros = jax.tree.map(jnp.zeros_like, params)  # The loop judges with the policy's new params.
  np.testing.assert_allclose(judge.with_params(fn, zeros)(['ab>'], ['ba']), [0.5], atol=1e-6)
  np.testing.assert_allclose(fn(['ab>'], ['ba']), scores[:1], rtol=1e-5)  # The judge unchanged.
  verifier = lambda prompts, completions, **_: np.ones(len(prompts))
  assert judge.with_params(verifier, zeros) is verifier  # Other rewards read no params.


def test_additive_score_adds_a_point_per_criterion():
  """The 5-point additive rubric (Yuan et al. Fig. 2) adapted to a verifiable task."""
  task = tasks.get_task('reverse')
  problem = tasks.Problem('abcd>', 'dcba', 4)
  # Plausible = a permutation of the input's letters; then half, all but one, all in place.
  cases = {'': 0, 'dcb': 1, 'xcba': 1, 'abcd': 2, 'dbca': 3, 'dcba': 5, ' dcba ': 5}
  assert {c: judge.additive_score(task, problem, c) for c in cases} == cases
  cot = tasks.get_task('multiplication_cot')
  problem = tasks.Problem('12*34=', cot.solve('12*34='), 2)  # '84+063#408'
  assert judge.additive_score(cot, problem, '1+1#408') == 5  # Only the product is scored.
  assert judge.additive_score(cot, problem, '84+063#418') == 4
  assert judge.additive_score(cot, problem, '84+063') == 0  # No product: nothing to judge.


def test_additive_judge_is_the_expected_score_of_the_model():
  tokenizer = Tokenizer.train([LETTERS + '>' + judge.judge_alphabet(judge.ADDITIVE_TEMPLATE) +
                               judge.SCORE_TOKENS], vocab_size=64)
  model, params = models.build(tiny_model_config(vocab_size=tokenizer.vocab_size),
                               jax.random.PRNGKey(0))
  fn = judge.AdditiveJudge(model, params, tokenizer)
  prompts, completions = ['ab>', 'cd>'], ['ba', 'dd']  # One length: one reference compile.
  got = fn(prompts, completions)
  ids = [tokenizer.encode(c)[0] for c in judge.SCORE_TOKENS]
  for i, (p, c) in enumerate(zip(prompts, completions)):
    tokens = tokenizer.encode(judge.ADDITIVE_TEMPLATE.format(prompt=p, completion=c), bos=True)
    probs = np.asarray(jax.nn.softmax(forward(model, params, jnp.asarray([tokens]))[0, -1]))[ids]
    np.testing.assert_allclose(got[i], probs @ np.arange(6) / probs.sum(), atol=1e-4)
  uniform = judge.with_params(fn, jax.tree.map(jnp.zeros_like, params))  # Six scores: 2.5.
  np.testing.assert_allclose(uniform(prompts, completions), 2.5, atol=1e-5)
  small = Tokenizer.train([LETTERS + '>' + judge.judge_alphabet(judge.ADDITIVE_TEMPLATE)], 32)
  with pytest.raises(ValueError, match='tokenizer_extra_chars'):
    judge.AdditiveJudge(model, params, small)


def test_agreement_exact():
  scores = [0.9, 0.8, 0.2, 0.6, 0.1, 0.4]
  verified = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
  # judged: T T F T F F; verified: T F T T F F -> tp 2, fp 1, fn 1, tn 2.
  got = judge.agreement(scores, verified)
  assert got == {'accuracy': 4 / 6, 'precision': 2 / 3, 'recall': 2 / 3, 'specificity': 2 / 3,
                 'balanced_accuracy': 2 / 3, 'n': 6}
  assert judge.agreement(scores, verified, threshold=0.85)['precision'] == 1.0
  assert np.isnan(judge.agreement([0.1], [1.0])['precision'])
  # A judge that calls everything wrong when 1 in 5 is right: accuracy 0.8, balanced 0.5.
  lazy = judge.agreement([0.0] * 10, [1.0, 1.0] + [0.0] * 8)
  assert lazy['accuracy'] == 0.8 and lazy['balanced_accuracy'] == 0.5
  assert judge.agreement([0.9], [1.0])['balanced_accuracy'] == 1.0  # no wrong candidate


# --- The reward model -------------------------------------------------------------------------


def _rm(tokenizer, seed=0):
  return rm_lib.build_reward_model(tiny_model_config(vocab_size=tokenizer.vocab_size),
                                   jax.random.PRNGKey(seed))


@pytest.fixture(scope='module')
def rm_random_head(tokenizer):
  """The head starts at zero (all rewards 0): give it weights so the tests see real rewards."""
  rm, params = _rm(tokenizer)
  head = jax.random.normal(jax.random.PRNGKey(1), params['head_D'].shape)
  return rm, {**params, 'head_D': head}


def test_rewards_padding_invariant(tokenizer, rm_random_head):
  rm, params = rm_random_head
  seqs = [tokenizer.encode(s, bos=True, eos=True) for s in ['ab>ba', 'abcdefgh>hgfedcba', 'a>']]
  tokens, mask = rm_lib.right_pad(seqs, 32)
  batch = np.asarray(rm_lib.score_rewards(rm, params, tokens, mask))
  assert batch.shape == (3,) and batch.dtype == np.float32 and np.all(batch != 0)
  for i, s in enumerate(seqs):
    alone = rm_lib.score_rewards(rm, params, np.asarray([s]), np.ones((1, len(s)), bool))
    np.testing.assert_allclose(batch[i], alone[0], atol=1e-5)


def test_rm_params_and_axes(tokenizer, lm):
  rm, params = _rm(tokenizer)
  axes = rm_lib.logical_axes_rm(rm.cfg)
  assert axes['head_D'] == ('embed',)
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.structure(
      params)
  assert rm != lm[0] and hash(rm) == hash(_rm(tokenizer, seed=3)[0])
  started = rm_lib.init_from_lm(params, lm[1])
  assert started['embed_VxD'] is lm[1]['embed_VxD'] and 'unembed_DxV' not in started


def test_bradley_terry_matches_numpy(tokenizer, rm_random_head):
  rm, params = rm_random_head
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, tokenizer.vocab_size, size=(2, 5, 12)).astype(np.int32)
  lengths = rng.integers(2, 13, size=(2, 5))
  mask = np.arange(12)[None, None, :] < lengths[:, :, None]
  batch = dict(chosen_tokens=tokens[0], chosen_mask=mask[0], rejected_tokens=tokens[1],
               rejected_mask=mask[1])
  loss_sum, (weight, metrics) = jax.jit(rm_lib.bradley_terry_loss, static_argnums=0)(
      rm, params, batch)
  r_w = np.asarray(rm_lib.score_rewards(rm, params, tokens[0], mask[0]), np.float64)
  r_l = np.asarray(rm_lib.score_rewards(rm, params, tokens[1], mask[1]), np.float64)
  expected = -np.log(1.0 / (1.0 + np.exp(-(r_w - r_l))))
  np.testing.assert_allclose(loss_sum, expected.sum(), rtol=1e-5)
  assert weight == 5
  np.testing.assert_allclose(metrics['margin'], np.sum(r_w - r_l), rtol=1e-5, atol=1e-5)
  assert metrics['accuracy'] == np.sum(r_w > r_l)


def _reversal_pairs(tokenizer, rng, n, seq_len):
  """Chosen: prompt + its reversal; rejected: prompt + a different random string."""
  chosen, rejected = [], []
  for _ in range(n):
    s = ''.join(rng.choice(list(LETTERS), size=rng.integers(2, 7)))
    wrong = s[::-1]
    while wrong == s[::-1]:
      wrong = ''.join(rng.choice(list(LETTERS), size=len(s)))
    chosen.append(tokenizer.encode(f'{s}>{s[::-1]}', bos=True, eos=True))
    rejected.append(tokenizer.encode(f'{s}>{wrong}', bos=True, eos=True))
  chosen_tokens, chosen_mask = rm_lib.right_pad(chosen, seq_len)
  rejected_tokens, rejected_mask = rm_lib.right_pad(rejected, seq_len)
  return dict(chosen_tokens=chosen_tokens, chosen_mask=chosen_mask,
              rejected_tokens=rejected_tokens, rejected_mask=rejected_mask)


def test_reward_model_learns_reversal_preference(tokenizer):
  start = time.time()
  rm, params = _rm(tokenizer)
  tx = optax.adam(3e-3)
  step = jax.jit(make_train_step(functools.partial(rm_lib.bradley_terry_loss, rm), tx,
                                 lambda step: 3e-3))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  for _ in range(150):
    state, metrics = step(state, _reversal_pairs(tokenizer, rng, 32, 16))
  held_out = _reversal_pairs(tokenizer, np.random.default_rng(12345), 256, 16)
  _, (weight, sums) = jax.jit(rm_lib.bradley_terry_loss, static_argnums=0)(
      rm, state.params, held_out)
  accuracy = float(sums['accuracy'] / weight)
  print(f'held-out pairwise accuracy {accuracy:.3f}, final train loss '
        f'{float(metrics["loss"]):.3f}, {time.time() - start:.1f}s')
  assert accuracy >= 0.9

  # The trained RM as a reward callable: correct reversals outscore wrong ones.
  fn = rm_lib.reward_model_reward(rm, state.params, tokenizer, seq_len=16)
  scores = fn(['abc>', 'abc>', 'hij>'], ['cba', 'abc', 'jih'], answer=None)
  assert scores.shape == (3,) and scores.dtype == np.float32 and np.all(np.isfinite(scores))
  assert scores[0] > scores[1]


def test_reward_model_reward_callable(tokenizer, rm_random_head):
  rm, params = rm_random_head
  fn = rm_lib.reward_model_reward(rm, params, tokenizer, seq_len=16)
  prompts, completions = ['ab>', 'abcdefgh>', 'a>'], ['ba', 'abcdefghijabcdefghij', '']
  scores = fn(prompts, completions)
  assert scores.shape == (3,) and np.all(np.isfinite(scores))
  ids = tokenizer.encode('ab>ba', bos=True, eos=True)  # Same as scoring the sequence directly.
  alone = rm_lib.score_rewards(rm, params, np.asarray([ids]), np.ones((1, len(ids)), bool))
  np.testing.assert_allclose(scores[0], alone[0], atol=1e-5)

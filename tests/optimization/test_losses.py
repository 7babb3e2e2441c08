"""Loss math against independent NumPy implementations of the papers' formulas."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from si_jax import models
from si_jax.optimization import grpo, preference
from tests.helpers import tiny_model_config

RNG = np.random.default_rng(0)


def _np_logsigmoid(x):
  return -np.logaddexp(0, -x)


# --- GRPO ------------------------------------------------------------------------------------


def test_grpo_advantages_match_numpy():
  r = RNG.normal(size=(4, 6)).astype(np.float32)
  mean, eps = r.mean(1, keepdims=True), 1e-6
  np.testing.assert_allclose(grpo.grpo_advantages(r, 'group'),
                             (r - mean) / (r.std(1, keepdims=True) + eps), rtol=1e-5)
  np.testing.assert_allclose(grpo.grpo_advantages(r, 'batch'), (r - mean) / (r.std() + eps),
                             rtol=1e-5)
  np.testing.assert_allclose(grpo.grpo_advantages(r, 'none'), r - mean, atol=1e-6)
  loo = np.stack([[r[g, i] - np.delete(r[g], i).mean() for i in range(6)] for g in range(4)])
  np.testing.assert_allclose(grpo.rloo_advantages(r), loo, atol=1e-5)
  assert set(grpo.ADVANTAGE_ESTIMATORS) >= {'grpo', 'rloo'}


def test_equal_rewards_give_zero_advantage():
  r = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  for name, fn in grpo.ADVANTAGE_ESTIMATORS.items():
    adv = np.asarray(fn(r))
    assert (adv[:2] == 0).all(), name
  np.testing.assert_array_equal(grpo.dynamic_sampling_keep(r), [False, False, True])


@pytest.mark.parametrize('estimator', ['k1', 'k3'])
@pytest.mark.parametrize('beta', [0.0, 0.04])
def test_per_token_loss_matches_numpy_with_clipping_on_both_sides(estimator, beta):
  cfg = grpo.GRPOConfig(beta=beta, kl_estimator=estimator, eps_low=0.2, eps_high=0.28)
  logp = RNG.normal(size=(4, 5)).astype(np.float32) - 2
  old = logp + RNG.normal(scale=0.5, size=(4, 5)).astype(np.float32)  # ratios far from 1
  ref = logp + RNG.normal(scale=0.3, size=(4, 5)).astype(np.float32)
  adv = np.array([1.5, -0.7, 0.3, -2.0], np.float32)
  ratio = np.exp(logp - old)
  assert (ratio < 0.8).any() and (ratio > 1.28).any()  # both clip edges exercised
  pg = -np.minimum(ratio * adv[:, None], np.clip(ratio, 0.8, 1.28) * adv[:, None])
  kl = logp - ref if estimator == 'k1' else np.exp(ref - logp) - (ref - logp) - 1
  expected = pg + beta * kl if beta else pg
  loss, clipped, _ = grpo.per_token_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv),
                                         cfg, jnp.asarray(ref) if beta else None)
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(clipped, np.clip(ratio, 0.8, 1.28) * adv[:, None]
                                < ratio * adv[:, None])


@pytest.mark.parametrize('aggregation', grpo.AGGREGATIONS)
def test_aggregation_matches_numpy_and_ignores_masked_tokens(aggregation):
  cfg = grpo.GRPOConfig(aggregation=aggregation, max_completion_len=7)
  values = RNG.normal(size=(3, 7)).astype(np.float32)
  mask = np.array([[1] * 7, [1] * 3 + [0] * 4, [1] + [0] * 6], bool)
  total, weight = grpo.aggregate(jnp.asarray(values), jnp.asarray(mask), cfg)
  v = values * mask
  expected = {'token_mean': v.sum() / mask.sum(),
              'seq_mean_token_mean': np.mean(v.sum(1) / mask.sum(1)),
              'seq_mean_token_sum_norm': v.sum() / (3 * 7)}[aggregation]
  np.testing.assert_allclose(total / weight, expected, rtol=1e-6)
  noisy = np.where(mask, values, 1e6)  # masked tokens can hold anything
  np.testing.assert_allclose(grpo.aggregate(jnp.asarray(noisy), jnp.asarray(mask), cfg)[0], total)


@pytest.fixture(scope='module')
def rollout():
  cfg = tiny_model_config()
  model, params = models.build(cfg, jax.random.PRNGKey(0))
  b, p, n = 6, 5, 7
  prompt = RNG.integers(4, 32, (b, p)).astype(np.int32)
  prompt_mask = np.ones((b, p), bool)
  prompt_mask[0, :2] = False  # left padding
  completion = RNG.integers(4, 32, (b, n)).astype(np.int32)
  completion_mask = np.arange(n)[None] < np.array([7, 3, 5, 1, 7, 6])[:, None]
  batch = {'prompt': prompt, 'prompt_mask': prompt_mask, 'completion': completion,
           'completion_mask': completion_mask}
  return model, params, batch


@pytest.mark.parametrize('aggregation', grpo.AGGREGATIONS)
def test_one_epoch_grpo_has_ratio_one_and_policy_gradient_of_the_advantage(rollout, aggregation):
  model, params, batch = rollout
  cfg = grpo.GRPOConfig(aggregation=aggregation, max_completion_len=7)
  adv = np.array([1.0, -1.0, 0.5, 0.0, 2.0, -0.5], np.float32)
  batch = {**batch, 'advantages': adv}
  loss_sum, (weight, metrics) = grpo.grpo_loss(model, params, batch, cfg)
  np.testing.assert_allclose(metrics['ratio'] / weight, 1.0, rtol=1e-6)
  lengths = batch['completion_mask'].sum(1)
  expected = {  # GRPO: every completion counts once, whatever its length.
      'seq_mean_token_mean': -adv.mean(),
      'token_mean': -(adv * lengths).sum() / lengths.sum(),  # DAPO: every token counts once.
      'seq_mean_token_sum_norm': -(adv * lengths).sum() / (6 * 7),  # Dr. GRPO's constant.
  }[aggregation]
  np.testing.assert_allclose(loss_sum / weight, expected, rtol=1e-5)


def test_grpo_defaults_to_the_papers_per_sequence_mean():
  assert grpo.GRPOConfig().aggregation == 'seq_mean_token_mean'
  from configs import grpo_addition  # pylint: disable=g-import-not-at-top
  assert grpo_addition.get_config().rl.aggregation == 'seq_mean_token_mean'


def test_algorithm_table_in_the_docstring_is_the_presets():
  """The doc table (grpo.py) and grpo.ALGORITHMS say the same; each preset builds its config."""
  from configs import grpo_addition  # pylint: disable=g-import-not-at-top
  from si_jax.optimization import grpo_update  # pylint: disable=g-import-not-at-top
  rows = [line.strip().strip('|').split('|') for line in grpo.__doc__.splitlines()
          if line.strip().startswith('|') and '---' not in line]
  header, *body = [[cell.strip() for cell in row] for row in rows]
  assert sorted(row[0] for row in body) == sorted(grpo.ALGORITHMS)
  for name, *cells in body:
    for key, cell in zip(header[1:], cells):
      assert cell.split()[0] == str(grpo.ALGORITHMS[name][key]), (name, key)
    rl = grpo_update.RLConfig.from_config(grpo_addition.get_config(name).rl)
    assert all(getattr(rl, k) == v for k, v in grpo.ALGORITHMS[name].items())
  dr = grpo_update.RLConfig.from_config(grpo_addition.get_config('dr_grpo').rl)
  assert dr.std_scale == 'none' and dr.loss.aggregation == 'seq_mean_token_sum_norm'
  with pytest.raises(ValueError, match='grpo_addition.py:ppo'):
    grpo_addition.get_config('ppo')


def test_soft_overlong_punishment_is_daposs_piecewise_penalty():
  l_max, l_cache = 10, 4
  lengths = np.arange(0, 11)
  paper = [0.0 if n <= l_max - l_cache else ((l_max - l_cache) - n) / l_cache
           for n in lengths]  # DAPO Eq. 13 (n == l_max is a truncated completion: -1).
  np.testing.assert_allclose(grpo.soft_overlong_punishment(lengths, l_max, l_cache), paper)
  with pytest.raises(ValueError, match='config.rl.overlong_buffer'):
    grpo.soft_overlong_punishment(lengths, l_max, 11)


def test_zero_advantage_gives_zero_policy_gradient(rollout):
  model, params, batch = rollout
  batch = {**batch, 'advantages': np.zeros(6, np.float32)}
  grads = jax.grad(lambda p: grpo.grpo_loss(model, p, batch, grpo.GRPOConfig())[0])(params)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) == 0.0


def test_kl_term_pulls_toward_the_reference(rollout):
  """beta > 0 with ref == policy: k3 KL and its gradient are zero; a shifted ref is penalised."""
  model, params, batch = rollout
  from si_jax.sampling import scoring  # pylint: disable=g-import-not-at-top
  logp, _ = scoring.score_tokens(model, params, batch['prompt'], batch['prompt_mask'],
                                 batch['completion'], batch['completion_mask'])
  batch = {**batch, 'advantages': np.zeros(6, np.float32), 'ref_logprobs': logp}
  cfg = grpo.GRPOConfig(beta=0.1, kl_estimator='k3')
  loss_sum, (_, metrics) = grpo.grpo_loss(model, params, batch, cfg)
  assert abs(float(loss_sum)) < 1e-6 and abs(float(metrics['kl'])) < 1e-6
  shifted = {**batch, 'ref_logprobs': logp - 0.5}
  assert float(grpo.grpo_loss(model, params, shifted, cfg)[0]) > 0


def test_overlong_mask():
  mask = np.ones((3, 4), bool)
  out = grpo.overlong_mask(mask, np.array([1, 3, 2]))
  np.testing.assert_array_equal(out.any(1), [True, False, True])


def test_bad_grpo_config_is_named():
  with pytest.raises(ValueError, match='aggregation'):
    grpo.GRPOConfig(aggregation='mean')
  with pytest.raises(ValueError, match='kl_estimator'):
    grpo.GRPOConfig(kl_estimator='k2')
  with pytest.raises(ValueError, match='std_scale'):
    grpo.grpo_advantages(np.zeros((2, 2)), 'median')


# --- Preference losses -----------------------------------------------------------------------


@pytest.mark.parametrize('name', ['dpo', 'ipo', 'simpo', 'spin'])
@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_preference_losses_match_numpy(name, smoothing):
  cfg = preference.PreferenceConfig(loss=name, beta=0.3, label_smoothing=smoothing,
                                    simpo_gamma=0.4)
  pi_w, pi_l, ref_w, ref_l = (RNG.normal(size=8).astype(np.float32) * 3 - 10 for _ in range(4))
  len_w, len_l = RNG.integers(1, 9, 8).astype(np.float32), RNG.integers(1, 9, 8).astype(np.float32)
  h = (pi_w - ref_w) - (pi_l - ref_l)
  expected = {
      'dpo': -(1 - smoothing) * _np_logsigmoid(0.3 * h) - smoothing * _np_logsigmoid(-0.3 * h),
      'ipo': (h - 1 / (2 * 0.3)) ** 2,
      'simpo': -_np_logsigmoid(0.3 * (pi_w / len_w - pi_l / len_l) - 0.4),
      'spin': -_np_logsigmoid(0.3 * h),
  }[name]
  got = preference.PREFERENCE_LOSSES[name](*map(jnp.asarray, (pi_w, pi_l, ref_w, ref_l, len_w,
                                                              len_l)), cfg)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _reversed_pairs(batch):
  """Preference pairs from a rollout batch: row b's completion chosen over row B-1-b's."""
  return {'prompt': batch['prompt'], 'prompt_mask': batch['prompt_mask'],
          'chosen_completion': batch['completion'], 'chosen_mask': batch['completion_mask'],
          'rejected_completion': batch['completion'][::-1],
          'rejected_mask': batch['completion_mask'][::-1]}


def test_preference_loss_on_a_model_uses_sequence_logprobs(rollout):
  model, params, batch = rollout
  pairs = _reversed_pairs(batch)
  cfg = preference.PreferenceConfig(loss='dpo', beta=0.5)
  zero_ref = {**pairs, 'ref_chosen': np.zeros(6, np.float32),
              'ref_rejected': np.zeros(6, np.float32)}
  loss_sum, (weight, metrics) = preference.preference_loss(model, params, zero_ref, cfg)
  pi_w = preference.sequence_logprobs(model, params, pairs, 'chosen')
  pi_l = preference.sequence_logprobs(model, params, pairs, 'rejected')
  np.testing.assert_allclose(loss_sum / weight, np.mean(-_np_logsigmoid(0.5 * (pi_w - pi_l))),
                             rtol=1e-5)
  # The policy as its own reference: margin 0, loss log 2 for every pair.
  self_ref = {**pairs, 'ref_chosen': pi_w, 'ref_rejected': pi_l}
  loss_sum, (weight, metrics) = preference.preference_loss(model, params, self_ref, cfg)
  np.testing.assert_allclose(loss_sum / weight, np.log(2), rtol=1e-5)
  assert abs(float(metrics['margin'])) < 1e-4


def test_rpo_nll_weight_adds_the_chosen_per_token_nll(rollout):
  """Iterative RPO: loss = pure loss + α * (-log p(y_w) / |y_w|); α = 0 is the pure loss."""
  model, params, batch = rollout
  pairs = _reversed_pairs(batch)
  pi_w = preference.sequence_logprobs(model, params, pairs, 'chosen')
  pi_l = preference.sequence_logprobs(model, params, pairs, 'rejected')
  self_ref = {**pairs, 'ref_chosen': pi_w, 'ref_rejected': pi_l}
  nll = -np.asarray(pi_w) / np.maximum(batch['completion_mask'].sum(1), 1)
  for name in ('dpo', 'spin'):
    cfg = preference.PreferenceConfig(loss=name, beta=0.5, nll_weight=0.7)
    loss_sum, (weight, metrics) = preference.preference_loss(model, params, self_ref, cfg)
    np.testing.assert_allclose(loss_sum / weight, np.log(2) + 0.7 * nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics['chosen_nll'] / weight, nll.mean(), rtol=1e-5)
  with pytest.raises(ValueError, match='nll_weight'):
    preference.PreferenceConfig(nll_weight=-1.0)


def test_bad_preference_config_is_named():
  with pytest.raises(ValueError, match='kto'):
    preference.PreferenceConfig(loss='kto')

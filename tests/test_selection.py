"""Selection: batched/sharded scores == unbatched references, scores rank constructed cases,
selectors are exact and deterministic, and the adaptive selector learns what predicts progress."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from si_jax import layout, models, sharding, tasks, train_state
from si_jax.optimization import sft, train_step
from si_jax.sampling import score
from si_jax.selection import adaptive, scores, selectors
from si_jax.tokenizers import Tokenizer
from tests.conftest import tiny_model_config

PAIRS = [('ab>', 'jihg'), ('cdef>', 'fe'), ('a>', 'bbbbbbb'), ('jihgfedcba>', 'a'),
         ('ccc>', 'ddd'), ('bd>', 'hij'), ('e>', 'gg'), ('fa>', 'cabbage'), ('hh>', 'i'),
         ('abcdefghij>', 'jj')]


@pytest.fixture(scope='module')
def setup():
  tokenizer = Tokenizer.train(['abcdefghij>'], 32)
  model, params = models.build(tiny_model_config(), jax.random.PRNGKey(0))
  examples = [{'prompt': p, 'completion': c} for p, c in PAIRS]
  return tokenizer, model, params, examples


def _ref_stats(model, params, tokenizer, prompt_ids, completion):
  logp, ent, mask = score(model, params, [prompt_ids], [tokenizer.encode(completion, eos=True)])
  return -logp.sum() / mask.sum(), ent.sum() / mask.sum()


def test_model_scores_equal_unbatched_reference(setup):
  tokenizer, model, params, examples = setup
  kw = dict(model=model, params=params, tokenizer=tokenizer, batch_size=4)
  ppl, ifd, ent = (scores.compute(n, examples, **kw) for n in ('perplexity', 'ifd', 'entropy'))
  for i, ex in enumerate(examples):
    nll, mean_ent = _ref_stats(model, params, tokenizer, tokenizer.encode(ex['prompt'], bos=True),
                               ex['completion'])
    bare_nll, _ = _ref_stats(model, params, tokenizer, [tokenizer.bos_id], ex['completion'])
    np.testing.assert_allclose(ppl[i], np.exp(nll), rtol=1e-5)
    np.testing.assert_allclose(ifd[i], nll / bare_nll, rtol=1e-5)
    np.testing.assert_allclose(ent[i], mean_ent, rtol=1e-5)


def test_embedding_equals_unbatched_hidden(setup):
  tokenizer, model, params, examples = setup
  emb = scores.compute('embedding', examples, model=model, params=params, tokenizer=tokenizer,
                       batch_size=4)
  module = nnx.merge(model.graphdef, params)
  for i, ex in list(enumerate(examples))[:3]:
    ids = tokenizer.encode(ex['prompt'], bos=True) + tokenizer.encode(ex['completion'], eos=True)
    t = len(ids)
    causal = jnp.tril(jnp.ones((t, t), bool))[None]
    h, _ = module.hidden(jnp.asarray([ids]), jnp.arange(t)[None], causal)
    np.testing.assert_allclose(emb[i], np.asarray(h[0]).mean(axis=0), atol=1e-5, rtol=1e-5)
  assert emb.shape == (len(examples), model.cfg.d_model)


def test_projected_gradients_equal_unbatched_reference(setup):
  tokenizer, model, params, examples = setup
  chosen = [examples[0], examples[5]]
  got = scores.projected_gradients(chosen, model=model, params=params, tokenizer=tokenizer,
                                   dim=16, seed=3, batch_size=2)

  @jax.jit
  def grad(p, prompt, completion):
    def loss(p):
      logp, _ = scores.completion_logprobs(model, p, prompt, jnp.ones_like(prompt, bool),
                                           completion, jnp.ones_like(completion, bool))
      return -jnp.mean(logp)
    return jax.grad(loss)(p)

  for i, ex in enumerate(chosen):
    leaves = jax.tree.leaves(grad(params, jnp.asarray([tokenizer.encode(ex['prompt'], bos=True)]),
                                  jnp.asarray([tokenizer.encode(ex['completion'], eos=True)])))
    ref = sum(g.reshape(-1) @ scores.leaf_projection(3, j, g.size, 16)
              for j, g in enumerate(leaves))
    np.testing.assert_allclose(got[i], ref, atol=1e-5, rtol=1e-4)


def test_sharded_pass_equals_one_device(setup):
  tokenizer, model, params, examples = setup
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 4})
  # One-device chunk sizes match the tests above, so those compiled programs are reused.
  one = dict(model=model, params=params, tokenizer=tokenizer, batch_size=4)
  on_mesh = dict(one, mesh=mesh, batch_size=8)
  for name in ('perplexity', 'ifd', 'entropy', 'embedding'):
    np.testing.assert_allclose(scores.compute(name, examples, **on_mesh),
                               scores.compute(name, examples, **one), atol=1e-5, rtol=1e-5)
  extra = dict(target=examples[:2], dim=16, seed=3)
  np.testing.assert_allclose(
      scores.compute('gradient_similarity', examples, **on_mesh, **extra),
      scores.compute('gradient_similarity', examples, **dict(one, batch_size=2), **extra),
      atol=1e-5)


def test_memorized_answer_scores_lower(setup):
  """A few dozen SFT steps on two pairs: their perplexity and IFD drop below a random pair's."""
  tokenizer, _, _, _ = setup
  mesh = sharding.make_mesh({}, jax.devices()[:1])
  tx = optax.adam(1e-2)
  model, state, shardings = train_state.create(tiny_model_config(), tx, mesh, seed=0)
  step = train_step.jit_train_step(train_step.make_train_step(
      functools.partial(sft.sft_loss, model), tx, lambda _: 1e-2), shardings, mesh)
  batch = layout.sft_rows(tokenizer, ['ab>', 'cd>'] * 4, ['jihg', 'fedc'] * 4, seq_len=16)
  for _ in range(40):
    state, _ = step(state, sharding.shard_batch(batch, mesh))
  examples = [{'prompt': 'ab>', 'completion': 'jihg'}, {'prompt': 'ab>', 'completion': 'gadbe'},
              {'prompt': 'cd>', 'completion': 'fedc'}, {'prompt': 'cd>', 'completion': 'bjaic'}]
  kw = dict(model=model, params=state.params, tokenizer=tokenizer)
  ppl, ifd = scores.compute('perplexity', examples, **kw), scores.compute('ifd', examples, **kw)
  assert ppl[0] < ppl[1] and ppl[2] < ppl[3], ppl
  assert ifd[0] < ifd[1] and ifd[2] < ifd[3], ifd
  assert ppl[0] < 1.5 and ifd[0] < 0.5, (ppl, ifd)


def test_gradient_similarity_prefers_target_like_examples(setup):
  tokenizer, model, params, _ = setup
  target = [{'prompt': 'ab>', 'completion': 'jihg'}] * 2  # same shapes as above: no recompile.
  cands = [{'prompt': 'hh>', 'completion': 'ccccccc'}, target[0]]
  sim = scores.compute('gradient_similarity', cands, model=model, params=params,
                       tokenizer=tokenizer, target=target, dim=16, seed=3, batch_size=2)
  np.testing.assert_allclose(sim[1], 1.0, atol=1e-5)
  assert sim[0] < sim[1]


def test_host_scores():
  examples = [{'prompt': 'x', 'completion': c, 'answer': 'a', 'successes': s, 'attempts': 4}
              for c, s in [('a', 0), ('a', 2), ('b', 4), ('b', 1)]]
  np.testing.assert_allclose(scores.compute('learnability', examples),
                             [0.0, 0.25, 0.0, 0.1875])
  reward = lambda prompts, completions, answers: np.asarray(
      [float(c == a) for c, a in zip(completions, answers)])
  np.testing.assert_array_equal(
      scores.compute('reward', examples, reward_fn=reward, fields={'answers': 'answer'}),
      [1, 1, 0, 0])
  task = tasks.get_task('reverse', max_len=6)
  share = scores.compute('agreement', examples[:3] + examples[:1], task=task, group_size=2)
  np.testing.assert_allclose(share, [1.0, 1.0, 0.5, 0.5])
  with pytest.raises(KeyError, match='known'):
    scores.compute('nope', examples)


def test_top_k_threshold_quantile_mix():
  s = np.asarray([0.5, 3.0, -1.0, 3.0, 2.0])
  np.testing.assert_array_equal(selectors.top_k(s, 3), [1, 3, 4])
  np.testing.assert_array_equal(selectors.top_k(s, 2, largest=False), [2, 0])
  np.testing.assert_array_equal(selectors.threshold(s, low=0.5, high=2.5), [0, 4])
  np.testing.assert_array_equal(selectors.quantile(s, 0.5), [1, 3, 4])
  np.testing.assert_array_equal(selectors.quantile(s, 0.25, above=False), [0, 2])
  mixed = selectors.mix({'a': [1.0, 2.0, 3.0], 'b': [30.0, 20.0, 10.0], 'c': [5.0, 5.0, 5.0]},
                        {'a': 1.0, 'b': 0.5, 'c': 3.0})
  np.testing.assert_allclose(mixed, 0.5 * np.asarray([-1.0, 0.0, 1.0]) * np.sqrt(1.5))


def test_k_center_spreads_over_clusters():
  rng = np.random.default_rng(0)
  centers = np.asarray([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
  points = np.concatenate([c + 0.1 * rng.normal(size=(20, 2)) for c in centers])
  for seed in range(3):
    picked = selectors.k_center(points, 4, seed=seed)
    assert sorted(set(picked // 20)) == [0, 1, 2, 3], picked
    np.testing.assert_array_equal(picked, selectors.k_center(points, 4, seed=seed))


def test_minhash_dedup_removes_near_duplicates():
  base = ['the quick brown fox jumps over the lazy dog',
          'pack my box with five dozen liquor jugs',
          'sphinx of black quartz judge my vow now please']
  texts = [base[0], base[1], base[0].replace('lazy', 'lazzy'), base[2], base[1] + '!', base[0]]
  kept = selectors.dedup_minhash(texts, jaccard=0.6, num_hashes=128)
  np.testing.assert_array_equal(kept, [0, 1, 3])
  np.testing.assert_array_equal(selectors.dedup_minhash(base), [0, 1, 2])


def test_curriculum_and_balance():
  d = np.asarray([3, 1, 2, 1, 3, 3, 2, 1, 1])
  np.testing.assert_array_equal(selectors.curriculum(d), [1, 3, 7, 8, 2, 6, 0, 4, 5])
  np.testing.assert_array_equal(selectors.curriculum(d, easy_first=False, high=2),
                                [2, 6, 1, 3, 7, 8])
  picked = selectors.balance(d, seed=1)
  assert len(picked) == 6 and np.bincount(d[picked])[1:].tolist() == [2, 2, 2]
  np.testing.assert_array_equal(picked, selectors.balance(d, seed=1))
  assert np.bincount(d[selectors.balance(d, per_level=3)])[1:].tolist() == [3, 2, 3]


def test_adaptive_selector_learns_the_predictive_feature():
  """Progress = feature 1 + noise: the policy's weight on feature 1 grows and dominates."""
  rng = np.random.default_rng(0)
  state = adaptive.SelectorState.init(['a', 'b', 'c'], learning_rate=0.3)
  for r in range(60):
    feats = rng.normal(size=(64, 3)) * [1.0, 5.0, 0.1]
    picked = adaptive.select(state, feats, k=8, seed=r)
    progress = feats[picked, 1] / 5.0 + 0.1 * rng.normal(size=8)
    state = adaptive.update(state, feats, picked, progress)
  w = np.asarray(state.weights)
  assert w[1] > 1.0 and w[1] > 3 * np.abs(w[[0, 2]]).max(), w
  assert adaptive.SelectorState.from_json(state.to_json()) == state
  assert state.rounds == 60

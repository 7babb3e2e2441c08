"""Selection: batched/sharded scores == unbatched references, scores rank constructed cases,
selectors are exact and deterministic, and the adaptive selector learns what predicts progress."""

import functools
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from si_jax import layout, models, sharding, tasks, train_state
from si_jax.optimization import sft, train_step
from si_jax.sampling import score
from si_jax.selection import adaptive, scores, selectors
from si_jax.selection import stage as selection_stage
from si_jax.tokenizers import Tokenizer
from tests.helpers import tiny_model_config

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
    np.testing.assert_allclose(ifd[i], np.exp(nll - bare_nll), rtol=1e-5)
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


def _adam_sft(tokenizer, pairs, schedule, num_steps: int, checkpoint_every: int = 0, seed=0):
  """num_steps Adam SFT steps (batch 8) on `pairs`: (model, state, AdamCheckpoints every
  `checkpoint_every` steps, each weighted by its segment's mean learning rate as in LESS)."""
  mesh = sharding.make_mesh({}, jax.devices()[:1])
  tx = optax.adam(schedule)
  model, state, shardings = train_state.create(tiny_model_config(), tx, mesh, seed=seed)
  step = train_step.jit_train_step(train_step.make_train_step(
      functools.partial(sft.sft_loss, model), tx, schedule), shardings, mesh)
  rng = np.random.default_rng(seed)
  checkpoints = []
  for i in range(num_steps):
    idx = rng.choice(len(pairs), 8, replace=len(pairs) < 8)
    batch = layout.sft_rows(tokenizer, [pairs[j][0] for j in idx], [pairs[j][1] for j in idx],
                            seq_len=16)
    state, _ = step(state, sharding.shard_batch(batch, mesh))
    if checkpoint_every and (i + 1) % checkpoint_every == 0:
      eta = float(np.mean([schedule(t) for t in range(i + 1 - checkpoint_every, i + 1)]))
      checkpoints.append(scores.adam_checkpoint(state.params, state.opt_state, eta))
  return model, state, checkpoints


@pytest.fixture(scope='module')
def memorized(setup):
  """A few dozen SFT steps on two pairs (ab> -> jihg, cd> -> fedc)."""
  tokenizer = setup[0]
  model, state, _ = _adam_sft(tokenizer, [('ab>', 'jihg'), ('cd>', 'fedc')],
                              optax.constant_schedule(1e-2), 40)
  return dict(model=model, params=state.params, tokenizer=tokenizer)


def test_memorized_answer_scores_lower(memorized):
  """The memorized pairs' perplexity and IFD drop below a random pair's."""
  examples = [{'prompt': 'ab>', 'completion': 'jihg'}, {'prompt': 'ab>', 'completion': 'gadbe'},
              {'prompt': 'cd>', 'completion': 'fedc'}, {'prompt': 'cd>', 'completion': 'bjaic'}]
  ppl = scores.compute('perplexity', examples, **memorized)
  ifd = scores.compute('ifd', examples, **memorized)
  assert ppl[0] < ppl[1] and ppl[2] < ppl[3], ppl
  assert ifd[0] < ifd[1] and ifd[2] < ifd[3], ifd
  assert ppl[0] < 1.5 and ifd[0] < 0.5, (ppl, ifd)


def test_ifd_filter_drops_pairs_the_instruction_does_not_lead_to(memorized):
  """Swapped pairs (cd> -> jihg): the instruction makes the answer harder, IFD >= 1. Ranked by
  IFD alone they would come first; the paper's filter drops them and keeps the matched pairs."""
  examples = [{'prompt': 'ab>', 'completion': 'jihg'}, {'prompt': 'cd>', 'completion': 'fedc'},
              {'prompt': 'cd>', 'completion': 'jihg'}, {'prompt': 'ab>', 'completion': 'fedc'}]
  ifd = scores.compute('ifd', examples, **memorized)
  assert np.all(ifd[:2] < 1) and np.all(ifd[2:] >= 1), ifd
  assert sorted(selectors.top_ifd(ifd, 4)) == [0, 1]
  assert sorted(selectors.top_ifd(ifd, 2, drop_unhelpful=False)) == [2, 3]


def test_loop_selection_stage_ranks_filters_and_learns(memorized):
  """The loop's selection (selection/stage.py): 'ifd' drops the swapped pairs before ranking,
  'agreement' keeps the most agreed-on, 'adaptive' returns its picks and learns from them."""
  exp = types.SimpleNamespace(model=memorized['model'], tokenizer=memorized['tokenizer'],
                              mesh=None)
  pairs = [('ab>', 'jihg', 0.9), ('cd>', 'fedc', 0.6), ('cd>', 'jihg', 0.5), ('ab>', 'fedc', 1.0)]
  examples = [{'prompt': p, 'completion': c,
               'scores': {'agreement': a, 'uncertainty': a * (1 - a)}} for p, c, a in pairs]
  loop = ml_collections.ConfigDict({'select_score': 'ifd', 'select_fraction': 0.5})
  kept, summary, picks = selection_stage.select(exp, memorized['params'], loop, examples, None, 0)
  assert [ex['completion'] for ex in kept] == ['jihg', 'fedc'] and kept[0]['prompt'] == 'ab>'
  assert picks is None and set(summary) == {'select_10', 'select_50', 'select_90'}
  loop.select_score = 'agreement'
  kept, _, _ = selection_stage.select(exp, memorized['params'], loop, examples, None, 0)
  assert [ex['scores']['agreement'] for ex in kept] == [0.9, 1.0]
  loop.select_score = 'adaptive'
  selector = selection_stage.init_selector(loop)
  kept, _, picks = selection_stage.select(exp, memorized['params'], loop, examples, selector, 0)
  assert len(kept) == 2 and len(picks[1]) == 2
  learned = selection_stage.learn(selector, picks, gain=1.0)
  assert learned['rounds'] == 1 and learned['weights'] != selector['weights']
  loop.select_score = 'learnability'
  with pytest.raises(ValueError, match="renamed: use 'uncertainty'"):
    selection_stage.check(loop)


def test_gradient_similarity_prefers_target_like_examples(setup):
  tokenizer, model, params, _ = setup
  target = [{'prompt': 'ab>', 'completion': 'jihg'}] * 2  # same shapes as above: no recompile.
  cands = [{'prompt': 'hh>', 'completion': 'ccccccc'}, target[0]]
  sim = scores.compute('gradient_similarity', cands, model=model, params=params,
                       tokenizer=tokenizer, target=target, dim=16, seed=3, batch_size=2)
  np.testing.assert_allclose(sim[1], 1.0, atol=1e-5)
  assert sim[0] < sim[1]


def _two_tasks(rng, n):
  """n reversal pairs ('abc>' -> 'cba'), then n spelling pairs ('abc=' -> '012', each letter's
  index): the same prompts, two tasks. 3-5 letters."""
  words = [''.join(rng.choice(list('abcdefghij'), rng.integers(3, 6), replace=False))
           for _ in range(2 * n)]
  return ([{'prompt': w + '>', 'completion': w[::-1]} for w in words[:n]] +
          [{'prompt': w + '=', 'completion': ''.join(str(ord(c) - 97) for c in w)}
           for w in words[n:]])


@pytest.fixture(scope='module')
def mixture():
  """A tiny model Adam-trained on reversal and spelling mixed, with 3 checkpoints under a decaying
  LR; a fresh pool of 8 + 8 examples, and 16 reversal examples as the validation (target) set
  (per-example gradients of this tiny model are nearly orthogonal, cosine ~0.15 within a task:
  the target's mean needs a few examples to stand out of the projection's noise)."""
  tokenizer = Tokenizer.train(['abcdefghij0123456789>='], 32)
  rng = np.random.default_rng(0)
  train = [(ex['prompt'], ex['completion']) for ex in _two_tasks(rng, 32)]
  schedule = optax.linear_schedule(1e-2, 1e-3, 24)
  model, _, checkpoints = _adam_sft(tokenizer, train, schedule, 24, checkpoint_every=8)
  return dict(model=model, tokenizer=tokenizer, checkpoints=checkpoints, schedule=schedule,
              pool=_two_tasks(rng, 8), target=_two_tasks(rng, 16)[:16])


@functools.partial(jax.jit, static_argnums=0)
def _example_grad(model, params, prompt_1xP, completion_1xC):
  def loss(p):
    logp, _ = scores.completion_logprobs(model, p, prompt_1xP, jnp.ones_like(prompt_1xP, bool),
                                         completion_1xC, jnp.ones_like(completion_1xC, bool))
    return -jnp.mean(logp)
  return jax.grad(loss)(params)


def test_adam_direction_is_adams_update_not_the_gradient(mixture):
  """LESS's Gamma == optax.scale_by_adam's update for the example's own gradient, projected; and
  it points elsewhere than the raw gradient (so preconditioning changes the score)."""
  tok, model, ckpt = mixture['tokenizer'], mixture['model'], mixture['checkpoints'][-1]
  chosen = mixture['pool'][:2]
  kw = dict(model=model, params=ckpt.params, tokenizer=tok, dim=512, seed=1, batch_size=8)
  gamma = scores.projected_gradients(chosen, adam=ckpt, **kw)
  raw = scores.projected_gradients(chosen, **kw)
  adam = optax.scale_by_adam(ckpt.b1, ckpt.b2, ckpt.eps)
  for i, ex in enumerate(chosen):
    g = _example_grad(model, ckpt.params, jnp.asarray([tok.encode(ex['prompt'], bos=True)]),
                      jnp.asarray([tok.encode(ex['completion'], eos=True)]))
    update, _ = adam.update(g, optax.ScaleByAdamState(ckpt.count, ckpt.mu, ckpt.nu))
    ref = sum(u.reshape(-1) @ scores.leaf_projection(1, j, u.size, 512)
              for j, u in enumerate(jax.tree.leaves(update)))
    np.testing.assert_allclose(gamma[i], ref, atol=1e-3 * np.linalg.norm(ref), rtol=1e-3)
    cosine = gamma[i] @ raw[i] / (np.linalg.norm(gamma[i]) * np.linalg.norm(raw[i]))
    assert cosine < 0.9, cosine


def test_less_selects_the_validation_task_over_distractors(mixture):
  """Validation = reversal; pool = 8 reversal + 8 spelling examples. LESS's top 8 are >= 7/8
  reversal, where a random 8 is 1/2 on average (and >= 7/8 with probability 65/12870 = 0.5%).
  The score is the learning-rate-weighted mean of the single-checkpoint scores."""
  ckpts = mixture['checkpoints']
  kw = dict(model=mixture['model'], tokenizer=mixture['tokenizer'], target=mixture['target'],
            dim=512, seed=1, batch_size=8)
  less = scores.compute('less', mixture['pool'], checkpoints=ckpts, **kw)
  precision = np.mean(selectors.top_k(less, 8) < 8)
  assert precision >= 7 / 8, (precision, less)
  eta = np.asarray([c.learning_rate for c in ckpts])
  assert eta[0] > eta[1] > eta[2]  # The decaying LR weights the checkpoints unequally.
  each = [scores.compute('less', mixture['pool'], checkpoints=[c], **kw) for c in ckpts]
  np.testing.assert_allclose(less, eta @ np.asarray(each) / eta.sum(), atol=1e-6)
  with pytest.raises(ValueError, match='checkpoints='):
    scores.compute('less', mixture['pool'], checkpoints=[], **kw)


def test_loop_selection_stage_less(mixture):
  """select_score='less' in the loop's stage: the mixture's three checkpoints as the loop's train
  states at the ends of rounds 1-3 (8 steps each), selecting for round 4 with
  less_checkpoints=3. The stage restores rounds 1-2, weights each by its round's mean LR (as
  the checkpoints were), and keeps >= 7/8 reversal of 8 (random: 1/2 on average, 0.5% >= 7/8).
  A fresh optimizer (a warm start: count 0, zero moments) gives Adam's first step, sign(g)."""
  ckpts, pool = mixture['checkpoints'], mixture['pool']
  states = {r: types.SimpleNamespace(step=8 * r, params=c.params, opt_state=(
      optax.ScaleByAdamState(c.count, c.mu, c.nu), optax.EmptyState()))
            for r, c in enumerate(ckpts, 1)}
  exp = types.SimpleNamespace(
      model=mixture['model'], tokenizer=mixture['tokenizer'], mesh=None,
      schedule=mixture['schedule'], restore=states.__getitem__,
      config=ml_collections.ConfigDict({'optimizer': {'b1': 0.9, 'b2': 0.999, 'eps': 1e-8}}))
  loop = ml_collections.ConfigDict({'select_score': 'less', 'select_fraction': 0.5,
                                    'less_checkpoints': 3, 'less_dim': 512, 'sft_steps': 8})
  selection_stage.check(loop)
  got = selection_stage.less_checkpoints(exp, states[3], loop, round_idx=4)
  np.testing.assert_allclose([c.learning_rate for c in got], [c.learning_rate for c in ckpts])
  kept, summary, picks = selection_stage.select(exp, None, loop, pool, None, 1,
                                                target=mixture['target'], checkpoints=got)
  assert len(kept) == 8 and picks is None
  assert np.mean([ex['prompt'].endswith('>') for ex in kept]) >= 7 / 8, (kept, summary)

  zeros = lambda t: jax.tree.map(jnp.zeros_like, t)
  fresh = types.SimpleNamespace(step=0, params=ckpts[-1].params, opt_state=(
      optax.ScaleByAdamState(jnp.zeros((), jnp.int32), zeros(ckpts[-1].mu), zeros(ckpts[-1].nu)),
      optax.EmptyState()))
  [first] = selection_stage.less_checkpoints(exp, fresh, loop, round_idx=1)
  assert first.learning_rate == pytest.approx(ckpts[0].learning_rate)  # The first round's mean.
  g = jnp.asarray([0.3, -2e-4, 0.0, 5.0])
  np.testing.assert_allclose(scores.adam_direction(g, 0.0, 0.0, first.count, first.b1, first.b2,
                                                   first.eps), [1, -1, 0, 1], atol=1e-3)
  kept, summary, _ = selection_stage.select(exp, None, loop, pool, None, 1,
                                            target=mixture['target'], checkpoints=[first])
  assert len(kept) == 8 and all(np.isfinite(v) for v in summary.values()), summary
  loop.less_checkpoints = 0
  with pytest.raises(ValueError, match='config.loop.less_checkpoints=0'):
    selection_stage.check(loop)


def test_host_scores():
  examples = [{'prompt': 'x', 'completion': c, 'answer': 'a', 'successes': s, 'attempts': 4}
              for c, s in [('a', 0), ('a', 2), ('b', 4), ('b', 1)]]
  np.testing.assert_allclose(scores.compute('uncertainty', examples),
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
  with pytest.raises(KeyError, match="renamed to 'uncertainty'"):
    scores.compute('learnability', examples)


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

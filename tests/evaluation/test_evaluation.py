"""Evaluation: pass@k / maj@k, fresh benchmarks, contamination, failure monitors, interaction."""

import math

import jax
import numpy as np
import pytest

from si_jax import models, report, sampling, tasks
from si_jax.data.store import DataStore
from si_jax.evaluation import benchmark, contamination, interactive, metrics, monitors
from si_jax.evaluation import stage as evaluation_stage
from si_jax.optimization import judge
from si_jax.tasks.base import Problem
from si_jax.tokenizers import Tokenizer
from tests.helpers import tiny_model_config

REVERSE = tasks.get_task('reverse')


# --- metrics ---------------------------------------------------------------------------------


def _brute_pass_at_k(n, c, k):
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_pass_at_k_matches_the_combinatorial_estimator():
  cases = [(n, c, k) for n in range(1, 11) for c in range(n + 1) for k in range(1, n + 1)]
  for k in range(1, 11):
    ns = np.asarray([n for n, _, kk in cases if kk == k])
    cs = np.asarray([c for _, c, kk in cases if kk == k])
    expected = [_brute_pass_at_k(n, c, k) for n, c in zip(ns, cs)]
    np.testing.assert_allclose(metrics.pass_at_k(ns, cs, k), expected, rtol=1e-12, atol=1e-12)
  # Large counts: the product form stays exact where the binomials are astronomically large.
  assert metrics.pass_at_k(1000, 3, 500) == pytest.approx(_brute_pass_at_k(1000, 3, 500), 1e-12)
  assert metrics.pass_at_k(5, 0, 3) == 0.0 and metrics.pass_at_k(5, 5, 3) == 1.0
  assert metrics.pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
  assert metrics.pass_at_k(5, 3, 3) == 1.0  # n - c < k: every draw of 3 holds a correct one.
  assert isinstance(metrics.pass_at_k(4, 1, 2), float)
  np.testing.assert_allclose(metrics.pass_at_k(np.asarray([[4, 4], [6, 6]]), 1, 2),
                             [[0.5, 0.5], [1 / 3, 1 / 3]])
  with pytest.raises(ValueError, match='more than the samples'):
    metrics.pass_at_k(3, 1, 4)
  with pytest.raises(ValueError, match='0 <= c <= n'):
    metrics.pass_at_k(3, 4, 1)


P_ABC = Problem('abc>', 'cba', 3)
P_DE = Problem('de>', 'ed', 2)
P_F = Problem('f>', 'f', 1)


def test_maj_at_k_on_constructed_votes():
  problems = [P_ABC, P_DE, P_F]
  completions = [['cba', 'xx', 'cba', 'yy'],  # Majority correct for every k.
                 ['zz', 'ed', 'ed', 'zz'],  # k=1 wrong, k=3 right, k=4 a tie: 'zz' came first.
                 ['', ' ', 'f', 'q']]  # Blank answers abstain: k=2 has no vote, k=3 'f'.
  np.testing.assert_array_equal(metrics.maj_at_k(REVERSE, problems, completions, 1), [1, 0, 0])
  np.testing.assert_array_equal(metrics.maj_at_k(REVERSE, problems, completions, 2), [1, 0, 0])
  np.testing.assert_array_equal(metrics.maj_at_k(REVERSE, problems, completions, 3), [1, 1, 1])
  np.testing.assert_array_equal(metrics.maj_at_k(REVERSE, problems, completions, 4), [1, 0, 1])
  with pytest.raises(ValueError, match='at least 5'):
    metrics.maj_at_k(REVERSE, problems, completions, 5)


def test_by_difficulty_and_summarize():
  problems = [P_ABC, Problem('xy>', 'yx', 2), P_DE, P_F]
  assert metrics.by_difficulty(problems, [1.0, 0.0, 0.5, 1.0]) == {1: 1.0, 2: 0.25, 3: 1.0}
  completions = [['cba', 'no', 'cba', 'no'],
                 ['no', 'no', 'no', 'yx'],
                 ['no', 'no', 'no', 'no'],
                 ['f', 'f', 'f', 'f']]
  s = metrics.summarize(REVERSE, problems, completions, ks=(1, 4))
  assert s['num_problems'] == 4
  assert s['accuracy@1'] == 0.5 and s['accuracy@1/d2'] == 0.0 and s['accuracy@1/d3'] == 1.0
  assert s['reward'] == pytest.approx((0.5 + 0.25 + 0 + 1) / 4)
  assert s['pass@1'] == pytest.approx(s['reward'])  # c / n per problem.
  assert s['pass@4'] == 0.75 and s['pass@4/d2'] == 0.5 and s['pass@4/d1'] == 1.0
  assert s['maj@4'] == 0.5 and s['maj@4/d3'] == 1.0  # A tie: 'cba' came first.
  assert s['maj@4/d2'] == 0.0 and s['maj@4/d1'] == 1.0
  assert all(isinstance(v, (int, float)) for v in s.values())


def test_label_report_shows_wrong_hard_labels_that_easy_ones_hide():
  """Nine right labels at level 1 and one wrong at level 3 average to 90%: the by-level report
  and the round table's hardest-level column show the 0%."""
  problems = [Problem(f'{c}>', c, 1) for c in 'abcdefghi'] + [P_ABC, P_DE]
  labelled = [{'prompt': p.prompt, 'completion': p.answer} for p in problems[:9]]
  labelled.append({'prompt': P_ABC.prompt, 'completion': 'abc'})  # Wrong: the answer is 'cba'.
  samples = [[p.answer] * 2 for p in problems[:9]] + [['abc', 'abc'], ['x', 'ed']]
  out = evaluation_stage.label_report(REVERSE, problems, samples, labelled)
  assert out['label_accuracy'] == pytest.approx(0.9)
  assert out['label_accuracy_by_level'] == {'d1': 1.0, 'd3': 0.0}
  table = report.round_table([{'round': 1, 'self': {}, 'control': {}, **out}], [1, 2, 3])
  header, cells = (line.split(' | ') for line in (table.splitlines()[0], table.splitlines()[2]))
  assert cells[header.index('label acc')] == '90'
  assert cells[header.index('label acc d3')] == '0'


# --- benchmarks and contamination ------------------------------------------------------------


def _example(prompt, round_idx):
  return dict(prompt=prompt, completion='x', reward=0.0, scores={}, source='model',
              round=round_idx, model_step=0)


def test_fresh_benchmarks_exclude_the_store_and_change_every_round(tmp_path):
  task = tasks.get_task('addition')
  first = benchmark.fresh_benchmark(task, round_idx=0, seed=3, per_difficulty=20)
  assert first == benchmark.fresh_benchmark(task, round_idx=0, seed=3, per_difficulty=20)
  assert [p.difficulty for p in first] == [d for d in task.difficulties for _ in range(20)]
  assert len({p.prompt for p in first}) == len(first)

  store = DataStore(str(tmp_path / 'store'))
  store.write_round(0, [_example(p.prompt, 0) for p in first[::2]])
  store.write_round(1, [_example(p.prompt, 1) for p in first[1::4]])
  seen = benchmark.store_hashes(store)
  assert seen == {benchmark.prompt_hash(p.prompt) for p in first[::2] + first[1::4]}
  assert len(benchmark.prompt_hash('abc')) == 16

  # Same round: the stored prompts are redrawn; a new round draws different problems.
  again = benchmark.fresh_benchmark(task, 0, 3, 20, exclude_hashes=seen)
  later = benchmark.fresh_benchmark(task, 1, 3, 20, exclude_hashes=seen)
  for problems in (again, later):
    assert len(problems) == len(first)
    assert not {benchmark.prompt_hash(p.prompt) for p in problems} & seen
  assert {p.prompt for p in later} != {p.prompt for p in first}
  assert later == benchmark.fresh_benchmark(task, 1, 3, 20, exclude_hashes=seen)


def test_fresh_benchmark_fails_clearly_when_a_level_runs_out():
  task = tasks.get_task('reverse', letters='ab', max_len=3)  # Length 1: only 2 problems.
  assert len(benchmark.fresh_benchmark(task, 0, 0, 2, difficulties=[1])) == 2
  with pytest.raises(ValueError, match='too few distinct problems'):
    benchmark.fresh_benchmark(task, 0, 0, 3, difficulties=[1])
  with pytest.raises(ValueError, match='not in'):
    benchmark.fresh_benchmark(task, 0, 0, 1, difficulties=[9])


def test_contamination_on_constructed_sets():
  train = ['the quick brown fox', 'jumps over the lazy dog']
  copy = contamination.contamination(train, train, n=8)
  assert (copy['exact'], copy['ngram'], copy['ngram_mean']) == (1.0, 1.0, 1.0)
  disjoint = contamination.contamination(['0123456789', '9876543210'], train, n=4)
  assert (disjoint['exact'], disjoint['ngram'], disjoint['ngram_mean']) == (0.0, 0.0, 0.0)
  # 'brown fox!!' shares 'brown' .. ' fox' (5 of its 7 distinct 5-grams); 'zzzzzz' shares none.
  mixed = contamination.contamination(['brown fox!!', 'zzzzzz'], train, n=5)
  assert mixed['exact'] == 0.0 and mixed['ngram'] == 0.5
  assert mixed['ngram_mean'] == pytest.approx((5 / 7 + 0) / 2)
  # Shorter than n: compared whole.
  short = contamination.contamination(['ab>', 'cd>'], ['ab>', 'xyz'], n=8)
  assert (short['exact'], short['ngram']) == (0.5, 0.5)


# --- monitors --------------------------------------------------------------------------------


def _random_strings(seed, count, length=24):
  rng = np.random.default_rng(seed)
  return [''.join(rng.choice(list('abcdefghijklmnopqrstuvwxyz'), length)) for _ in range(count)]


def test_diversity_measures_separate_collapse_from_diversity():
  same = ['abcdefghijklmnop'] * 20  # No 3-gram repeats within the text.
  diverse = _random_strings(0, 20)
  assert monitors.distinct_n(same, 3) == pytest.approx(1 / 20)
  assert monitors.distinct_n(diverse, 3) > 0.95
  assert monitors.distinct_n(['a b a b', 'a b'], 1, tokens='whitespace') == 2 / 6
  assert monitors.distinct_n([''], 2) == 0.0
  assert monitors.self_bleu(same) == pytest.approx(1.0)
  assert monitors.self_bleu(diverse) < 0.3
  # Subsampling is seeded; with more texts than `sample` it still runs and is reproducible.
  many = _random_strings(1, 200)
  assert monitors.self_bleu(many, sample=32, seed=5) == monitors.self_bleu(many, sample=32, seed=5)
  assert math.isnan(monitors.self_bleu(['only one']))
  assert monitors.token_entropy([[1.0, 3.0], [2.0, 9.0]], [[True, True], [True, False]]) == 2.0


def test_paired_change_is_mean_difference_with_its_standard_error():
  before, after = [0.0, 1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0]
  change, se = metrics.paired_change(before, after)
  diff = np.subtract(after, before)
  assert change == pytest.approx(diff.mean())
  assert se == pytest.approx(diff.std(ddof=1) / math.sqrt(5))
  with pytest.raises(ValueError, match='paired_change'):
    metrics.paired_change([1.0, 0.0], [1.0])


def test_reward_hacking_needs_both_moves_beyond_two_standard_errors():
  rng = np.random.default_rng(0)
  truth = (rng.random(400) < 0.9).astype(float)
  worse = np.where(rng.random(400) < 0.3, 0.0, truth)  # 30% of the right answers lost.
  hacked = monitors.reward_hacking((0.8, 0.01), (0.5, 0.01), truth, worse)
  assert hacked['flag'] and '0.500 -> 0.800' in hacked['reason'], hacked
  # The same fall with a flat proxy, or a proxy rise within its noise, is not a hack.
  assert not monitors.reward_hacking((0.5, 0.01), (0.5, 0.01), truth, worse)['flag']
  assert not monitors.reward_hacking((0.53, 0.02), (0.5, 0.02), truth, worse)['flag']
  # A proxy rise with accuracy unchanged but for a few flipped examples: within noise.
  noisy = truth.copy()
  noisy[:3] = 1 - noisy[:3]
  healthy = monitors.reward_hacking((0.8, 0.01), (0.5, 0.01), truth, noisy)
  assert not healthy['flag'] and 'no reward hacking' in healthy['reason']


def test_judge_drift_collapse_and_gap_flags():
  drift = monitors.judge_drift([0.8, 0.9, 0.85, 0.7])
  assert drift['flag'] and '0.700' in drift['reason'] and '0.900' in drift['reason']
  assert not monitors.judge_drift([0.8, 0.9, 0.85])['flag']
  assert not monitors.judge_drift([{'accuracy': 0.9}, {'accuracy': float('nan')}])['flag']
  assert monitors.judge_drift([{'accuracy': 0.9}, {'accuracy': 0.5}])['flag']
  # The judge of a self-rewarding run going lazy (seen: recall 0.26 -> 0.07 -> 0 while 18-25%
  # of candidates were right): its plain accuracy does not fall, its balanced accuracy does.
  verified = np.asarray([1.0] * 20 + [0.0] * 80)
  early = judge.agreement(np.r_[[1.0] * 6, [0.0] * 14, [1.0] * 2, [0.0] * 78], verified)
  lazy = judge.agreement(np.zeros(100), verified)
  assert lazy['accuracy'] >= early['accuracy'] - 0.1
  assert monitors.judge_drift([early, lazy])['flag']

  assert monitors.collapse([0.8, 0.7, 0.4], [2.0, 1.9, 1.8])['flag']  # distinct -50%.
  assert monitors.collapse([0.8, 0.8, 0.8], [2.0, 1.5, 1.0])['flag']  # entropy -50%.
  steady = monitors.collapse([0.8, 0.75, 0.7], [2.0, 1.9, 1.8])
  assert not steady['flag'] and '0.800 -> 0.700' in steady['reason']
  assert not monitors.collapse([0.8], [])['flag']
  # With a real monitoring set, narrowing alone is not collapse; narrowing while real data gets
  # less likely (beyond two standard errors of the paired change) is.
  rng = np.random.default_rng(1)
  nll = rng.uniform(0.1, 0.5, 300)
  narrowing = ([0.8, 0.4], [2.0, 1.0])
  assert not monitors.collapse(*narrowing, nll_first=nll, nll_last=nll * 0.9)['flag']
  assert not monitors.collapse(*narrowing, nll_first=nll,
                               nll_last=nll + rng.normal(0, 0.05, 300))['flag']
  assert monitors.collapse(*narrowing, nll_first=nll, nll_last=nll * 1.5)['flag']
  # A near-perfect model's NLL may grow thirtyfold from 1e-5 and still mean nothing.
  assert not monitors.collapse(*narrowing, nll_first=nll * 1e-4, nll_last=nll * 3e-3,
                               rise=0.05)['flag']
  assert not monitors.collapse([0.8, 0.8], [2.0, 2.0], nll_first=nll, nll_last=nll * 1.5)['flag']

  assert monitors.gen_verification_gap(0.75, 0.25) == 0.5
  assert monitors.gen_verification_gap([1.0, 0.5], [0.5, 0.0]) == 0.5


def test_perplexity_is_exp_mean_nll_from_score():
  tok = Tokenizer.train(['abcdefghij>'], 32)
  model, params = models.build(tiny_model_config(), jax.random.PRNGKey(0))
  prompts, completions = ['abc>', 'hgfedcba>', 'j>'], ['cba', 'abcdefgh', 'j']
  ppl = monitors.perplexity(model, params, tok, prompts, completions, batch_size=2)
  logp, _, mask = sampling.score(model, params, tok.encode_batch(prompts, bos=True),
                                 tok.encode_batch(completions, eos=True))
  assert mask.sum() == 3 + 8 + 1 + 3  # Each completion and its eos.
  assert ppl == pytest.approx(math.exp(-logp[mask].sum() / mask.sum()), rel=1e-5)
  assert 1.0 < ppl < 100.0


# --- interaction -----------------------------------------------------------------------------


def test_interactive_accuracy_with_a_scripted_policy():
  task = tasks.get_task('code')
  problems = task.generate(seed=0, n=4, difficulty=1)

  def policy(prompts):  # Problem i is solved on turn i (0-based); problem 3 never.
    out = []
    for prompt in prompts:
      i = next(j for j, p in enumerate(problems) if prompt.startswith(p.prompt))
      turn = prompt.count('# Try again.\n')
      out.append(problems[i].answer if i < 3 and turn >= i else '  return None\n')
    return out

  result = interactive.interactive_accuracy(policy, task, problems, max_turns=3)
  assert result == {'success@1': 0.25, 'success@2': 0.5, 'success@3': 0.75, 'success': 0.75,
                    'mean_turns': (1 + 2 + 3 + 3) / 4, 'num_problems': 4}

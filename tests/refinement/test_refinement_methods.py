"""Refinement methods: Self-Refine / Reflexion stopping, keep-best and memory; step-level search;
test-time training (TTRL raises maj@n on unlabeled test problems).

A toy sampler (an explicit distribution over a few completions) makes the search cases exact; a
weak tiny model (100 SFT steps on reversal, shared by the module) checks the real integration.
"""

import collections
import dataclasses

import ml_collections
import numpy as np
import pytest

from configs import grpo_addition
from si_jax import experiment, sampling
from si_jax.evaluation import metrics
from si_jax.optimization import rounds
from si_jax.refinement import adaptation, self_refine, tree_search
from si_jax.tasks import Problem, StringTask
from si_jax.tasks.arithmetic import MultiplicationTask
from si_jax.tokenizers import Tokenizer

BASE_STEPS = 100
MAX_NEW = 10


# --- A toy sampler: exact, model-free ----------------------------------------------------------


class ToySampler:
  """Samples from an explicit distribution over completions per prompt: p(next char | prefix)
  is the mass of the completions extending prefix + char, eos ends a completion. Greedy takes
  the likeliest token (the lowest id on ties). Implements Sampler.sample's interface."""

  def __init__(self, tokenizer: Tokenizer, table: dict[str, dict[str, float]]):
    self.tok, self.table = tokenizer, table

  def _next(self, prompt: str, prefix: str) -> dict[int, float]:
    dist = collections.defaultdict(float)
    for completion, p in self.table[prompt].items():
      if completion == prefix:
        dist[self.tok.eos_id] += p
      elif completion.startswith(prefix):
        dist[self.tok.encode(completion[len(prefix)])[0]] += p
    total = sum(dist.values())
    return {t: p / total for t, p in sorted(dist.items())}

  def sample(self, params, prompts, *, max_new_tokens, strategy, n=1, seed=0, eos_id=3,
             stop_sequences=()):
    del params
    rows = len(prompts) * n
    tokens = np.zeros((rows, max_new_tokens), np.int32)
    lengths, reasons = np.zeros(rows, np.int32), np.full(rows, 3, np.int32)
    logprobs = np.zeros((rows, max_new_tokens), np.float32)
    for b, ids in enumerate(prompts):
      text = self.tok.decode(ids)
      prompt = max((k for k in self.table if text.startswith(k)), key=len)
      for j in range(n):
        r, rng = b * n + j, np.random.default_rng([seed + b, j])
        prefix, out = text[len(prompt):], []
        for t in range(max_new_tokens):
          dist = self._next(prompt, prefix)
          choices, probs = list(dist), np.asarray(list(dist.values()))
          token = choices[int(np.argmax(probs))] if strategy.temperature == 0 else int(
              rng.choice(choices, p=probs))
          out.append(token)
          logprobs[r, t] = np.log(dist[token])
          if token == eos_id:
            reasons[r] = 1
            break
          prefix += self.tok.decode([token])
          if any(out[-len(s):] == list(s) for s in stop_sequences if s):
            reasons[r] = 2
            break
        tokens[r, :len(out)], lengths[r] = out, len(out)
    return sampling.SampleOutput(tokens=tokens, lengths=lengths, finish_reason=reasons,
                                 logprobs=logprobs, sampling_logprobs=logprobs)


REVERSE = StringTask(reverse=True, letters='abcd', max_len=4)
TOY_TOK = Tokenizer.train(['abcd>0123456789*=+#'], 64)


def _search(table, problems, task=REVERSE, method='beam', **kw):
  kw = {'step_tokens': 1, 'max_new_tokens': 8, 'seed': 0, **kw}
  if method == 'beam':
    return tree_search.beam_search(ToySampler(TOY_TOK, table), None, TOY_TOK, task, problems, **kw)
  return tree_search.best_first_search(ToySampler(TOY_TOK, table), None, TOY_TOK, task, problems,
                                       **kw)


GREEDY = dict(beam_width=1, expand=1, strategy=sampling.Greedy())


def test_beam_search_finds_the_likeliest_completion_greedy_misses():
  # Greedy goes 'a' (0.6) then 'a' or 'b' (0.3 each); 'ba' (0.4) is the likeliest completion.
  table = {'ab>': {'aa': 0.3, 'ab': 0.3, 'ba': 0.4}}
  problems = [Problem('ab>', 'ba', 2)]
  assert _search(table, problems, **GREEDY).completions == ['aa']
  beam = _search(table, problems, beam_width=2, expand=16)
  assert beam.completions == ['ba']
  np.testing.assert_allclose(beam.confidence, [np.log(0.4)], rtol=1e-5)


@pytest.mark.parametrize('method', ['beam', 'best_first'])
def test_search_with_a_verifier_finds_the_verified_answer_greedy_and_likelihood_miss(method):
  table = {'ab>': {'aa': 0.35, 'ab': 0.35, 'ba': 0.2, 'bb': 0.1},
           'cd>': {'dc': 0.9, 'cc': 0.1}}
  problems = [Problem('ab>', 'ba', 2), Problem('cd>', 'dc', 2)]
  assert _search(table, problems, **GREEDY).answers == ['aa', 'dc']
  if method == 'beam':
    kw = dict(beam_width=3, expand=16)
    unverified = _search(table, problems, **kw)
    assert unverified.answers == ['aa', 'dc'] and unverified.verified is None
  else:
    kw = dict(expand=16, max_expansions=8)
  found = _search(table, problems, method=method, verifier=REVERSE.verify, **kw)
  assert found.answers == ['ba', 'dc']
  np.testing.assert_array_equal(found.verified, [1.0, 1.0])
  assert found.samples == 16 * int(found.expansions.sum())  # Every expansion samples 16 steps.
  assert found.generated_tokens >= found.samples


def test_steps_end_at_delimiters_or_fixed_chunks():
  task = MultiplicationTask(cot=True)
  prompt = '12*34='
  completion = task.solve(prompt)  # '84+063#408': partial products, '#', the product.
  table = {prompt: {completion: 1.0}}
  problems = [Problem(prompt, completion, 2)]
  kw = dict(task=task, max_new_tokens=16, **GREEDY)
  steps = lambda **k: _search(table, problems, **kw, **k).steps
  assert steps(step_tokens=16, delimiters=('+', '#')) == 3  # '84+', '063#', '408' + eos.
  assert steps(step_tokens=16) == 1
  assert steps(step_tokens=4) == 3  # 11 tokens (eos included) in chunks of 4.
  result = _search(table, problems, step_tokens=16, delimiters=('+', '#'), verifier=task.verify,
                   **kw)
  assert result.completions == [completion] and result.verified[0] == 1.0


# --- A weak model, shared by the module ---------------------------------------------------------
# Not the suite's shared weak base (tests/helpers.py), on purpose: test-time methods need a model
# whose plurality is mostly right while its samples still disagree (5-letter maj@4 ~0.7, maj@16
# ~0.85), and that base is far below it (5 letters: maj@4 0.01); 200 more SFT steps on it give
# samples that agree (avg 0.54, maj@4 0.57, maj@16 0.61), leaving a vote little to teach.


def _config(workdir: str, learning_rate: float, schedule: str) -> ml_collections.ConfigDict:
  c = grpo_addition.get_config()  # The tiny model, moved to reversal of 1-6 letters.
  c.workdir = workdir
  c.task = ml_collections.ConfigDict({'name': 'reverse', 'letters': 'abcdefghij',
                                      'min_len': 1, 'max_len': 6})
  c.data.seq_len = 20
  c.tokenizer_extra_chars = self_refine.template_alphabet(self_refine.REVISE_TEMPLATE,
                                                          self_refine.MEMORY_TEMPLATE)
  c.mesh.data, c.mesh.fsdp = 8, 1
  c.optimizer.learning_rate, c.optimizer.schedule = learning_rate, schedule
  c.optimizer.warmup_steps = 10
  return c


@pytest.fixture(scope='module')
def weak(tmp_path_factory):
  """(base experiment; its params after 100 SFT steps on labelled problems: ~50% greedy
  accuracy, the rule not yet learnt past 3 letters; a test-time experiment on the same model with
  a fresh optimizer at a small constant LR; its initial state, to copy for each adaptation (the
  updates donate the state they are given); one shared sampler)."""
  root = tmp_path_factory.mktemp('refine')
  base, state = experiment.setup(_config(str(root / 'base'), 1e-2, 'cosine'), BASE_STEPS)
  problems = base.task.sample([0, 0], BASE_STEPS * 64)
  state, _ = rounds.train_sft(base, rounds.sft_step(base), state, [p.prompt for p in problems],
                              [p.answer for p in problems], num_steps=BASE_STEPS, batch_size=64,
                              seed=0, max_epochs=1)
  tt, tt_state = experiment.setup(_config(str(root / 'tt'), 3e-4, 'constant'), 1)
  tt.tokenizer = base.tokenizer
  initial = rounds.frozen_copy(tt_state.replace(params=state.params))
  yield base, state.params, tt, initial, sampling.Sampler(base.model, base.mesh)
  base.ckpt.close()
  tt.ckpt.close()


def _match(problem: Problem, completion: str) -> float:
  """A partial-credit verifier: the fraction of answer positions right (1 only when exact)."""
  right = sum(a == b for a, b in zip(problem.answer, completion))
  return right / max(len(problem.answer), len(completion), 1)


@pytest.mark.xdist_group('refine_weak')
def test_self_refine_stops_at_the_first_passing_critique_and_respects_max_rounds(weak):
  base, params, _, _, sampler = weak
  problems = base.task.generate(seed=3, n=4, difficulty=5)
  pass_at = {problems[0].prompt: 1, problems[1].prompt: 2, problems[2].prompt: 99,
             problems[3].prompt: 3}
  calls = collections.Counter()

  def critic(prompts, completions):
    del completions
    calls.update(prompts)
    return np.asarray([float(calls[p] >= pass_at[p]) for p in prompts])

  out = self_refine.self_refine(sampler, params, base.tokenizer, base.task, problems,
                                critic=critic, max_rounds=3, max_new_tokens=MAX_NEW)
  np.testing.assert_array_equal(out.rounds, [1, 2, 3, 3])
  assert out.samples == out.critiques == 9 and out.generated_tokens > 0
  np.testing.assert_array_equal(out.confidence, [1.0, 1.0, 0.0, 1.0])
  assert out.completions[1] == out.attempts[1][1].completion  # The passing revision is kept.
  first, second = out.attempts[1]
  assert first.prompt == problems[1].prompt
  assert second.prompt == self_refine.revise_prompt(problems[1].prompt, first.completion)


@pytest.mark.xdist_group('refine_weak')
def test_self_refine_never_returns_a_worse_verified_answer_than_its_first(weak):
  base, params, _, _, sampler = weak
  problems = base.task.generate(seed=4, n=8, difficulty=6)
  # An adversarial critic that prefers worse answers and never passes: only the verifier can
  # keep the refinement from returning something worse than the first attempt.
  critic = lambda prompts, completions: -np.asarray(
      [_match(Problem(p, base.task.solve(p), 6), c) for p, c in zip(prompts, completions)])
  out = self_refine.self_refine(sampler, params, base.tokenizer, base.task, problems,
                                critic=critic, verifier=_match, max_rounds=4,
                                strategy=sampling.Temperature(1.0), max_new_tokens=MAX_NEW)
  got_worse = False
  for problem, completion, attempts in zip(problems, out.completions, out.attempts):
    scores = [a.verified for a in attempts]
    assert _match(problem, completion) == max(scores) >= scores[0]
    assert len(attempts) == 4 or scores[-1] == 1.0  # Stops only when the verifier passes.
    got_worse |= min(scores[1:], default=1.0) < scores[0]
  assert got_worse, 'no later attempt was worse: the check above could not fail'


@pytest.mark.xdist_group('refine_weak')
def test_reflexion_memory_holds_the_earlier_failures(weak):
  base, params, _, _, sampler = weak
  problems = base.task.generate(seed=5, n=2, difficulty=4)
  never = lambda prompts, completions: np.zeros(len(prompts))
  out = self_refine.reflexion(sampler, params, base.tokenizer, base.task, problems,
                              critic=never, max_trials=4, max_memory=2,
                              strategy=sampling.Temperature(1.0), max_new_tokens=MAX_NEW)
  np.testing.assert_array_equal(out.rounds, [4, 4])
  mem = lambda a: self_refine.MEMORY_TEMPLATE.format(attempt=a.completion)
  for problem, attempts in zip(problems, out.attempts):
    a = attempts
    assert [x.prompt for x in a] == [
        problem.prompt, mem(a[0]) + problem.prompt, mem(a[0]) + mem(a[1]) + problem.prompt,
        mem(a[1]) + mem(a[2]) + problem.prompt]  # The oldest failure leaves a full memory.


@pytest.mark.xdist_group('refine_weak')
def test_beam_search_of_width_one_is_greedy_decoding(weak):
  base, params, _, _, sampler = weak
  problems = base.task.sample([6], 8)
  texts, _ = sampler.generate(params, base.tokenizer, [p.prompt for p in problems],
                              max_new_tokens=MAX_NEW)
  beam = tree_search.beam_search(sampler, params, base.tokenizer, base.task, problems,
                                 step_tokens=3, max_new_tokens=MAX_NEW, **GREEDY)
  assert beam.completions == [t[0] for t in texts]
  assert beam.steps >= 2  # Several chunks were stitched together.


class LabelTrap:
  """A problem whose reference answer cannot be read: proves training never looks at it."""

  def __init__(self, problem: Problem):
    self.prompt, self.difficulty = problem.prompt, problem.difficulty

  @property
  def answer(self):
    raise AssertionError('test-time training read a reference answer')


def _maj(exp, params, sampler, problems, seed=123) -> tuple[float, float]:
  """(maj@4 averaged over 4 disjoint sets of 4 samples, maj@16) at temperature 1."""
  texts, _ = sampler.generate(params, exp.tokenizer, [p.prompt for p in problems],
                              max_new_tokens=MAX_NEW, strategy=sampling.Temperature(1.0), n=16,
                              seed=seed)
  maj4 = np.mean([metrics.maj_at_k(exp.task, problems, [t[i:i + 4] for t in texts], 4).mean()
                  for i in range(0, 16, 4)])
  return float(maj4), float(metrics.maj_at_k(exp.task, problems, texts, 16).mean())


def _frontier(exp, seed: int) -> list[Problem]:
  """64 five-letter reversals: the weak model's plurality is mostly right but its samples
  disagree (maj@4 ~0.7, maj@16 ~0.85), the regime where self-consistency can teach it."""
  return exp.task.generate(seed=seed, n=64, difficulty=5)


@pytest.mark.xdist_group('refine_weak')
def test_ttrl_raises_maj_at_n_on_unlabeled_test_problems(weak):
  _, _, tt, initial, sampler = weak
  problems = _frontier(tt, seed=7)
  before = _maj(tt, initial.params, sampler, problems)
  cfg = adaptation.TTRLConfig(num_iterations=30, prompts_per_iteration=16, group_size=8,
                             max_new_tokens=MAX_NEW)
  result = adaptation.ttrl(tt, rounds.frozen_copy(initial), [LabelTrap(p) for p in problems],
                           cfg, answer_n=16, seed=0, sampler=sampler)
  after = _maj(tt, result.state.params, sampler, problems)
  print('TTRL maj@4, maj@16:', before, '->', after)
  assert after[0] >= before[0] + 0.05, (before, after)  # Seen: +0.12 to +0.18 over 5 seeds.
  assert after[1] >= before[1] - 0.05, (before, after)  # No collapse onto wrong answers.
  assert result.updates == 30 and result.samples == 30 * 16 * 8
  assert result.selection.samples == 64 * 16
  answered = np.mean([a == p.answer for a, p in zip(result.selection.answers, problems)])
  assert answered >= before[1] - 0.05


@pytest.mark.xdist_group('refine_weak')
def test_test_time_sft_makes_the_model_agree_with_its_majority_without_labels(weak):
  _, _, tt, initial, sampler = weak
  problems = _frontier(tt, seed=8)
  before = _maj(tt, initial.params, sampler, problems)
  cfg = adaptation.SFTConfig(num_rounds=2, group_size=8, sft_steps=8, batch_size=32,
                            max_new_tokens=MAX_NEW)
  result = adaptation.sft(tt, rounds.frozen_copy(initial), [LabelTrap(p) for p in problems], cfg,
                          answer_n=16, seed=0, sampler=sampler)
  after = _maj(tt, result.state.params, sampler, problems)
  print('test-time SFT maj@4, maj@16:', before, '->', after)
  first, second = result.history
  assert first['examples'] > 0 and result.updates > 0 and result.samples == 2 * 64 * 8
  # Round 2 votes after round 1's SFT on the majority answers: the model agrees with itself
  # more (seen: share 0.55-0.60 -> 0.64-0.71). Its accuracy gain is noisier (maj@4 +0.02 to
  # +0.2 over seeds), so only a loss is ruled out here.
  assert second['majority_share'] >= first['majority_share'] + 0.05, result.history
  assert after[0] >= before[0] - 0.03, (before, after)


class _FixedSamples:
  """A sampler whose `generate` returns given completions (k per prompt)."""

  def __init__(self, texts):
    self.texts = texts

  def generate(self, params, tokenizer, prompts, *, n, **_):
    del params, tokenizer
    assert len(prompts) == len(self.texts) and all(len(t) == n for t in self.texts)
    return self.texts, None


def test_accuracy_at_k_is_the_ttrl_papers_avg_and_maj():
  problems = [Problem('ab>', 'ba', 2), Problem('cd>', 'dc', 2), Problem('ee>', 'ee', 2)]
  texts = [['ba', 'ab', 'ba', 'x'],  # 2/4 right, majority right
           ['cd', 'cd', 'dc', 'dc'],  # 2/4 right, tie -> first seen ('cd') wrong
           ['ee', 'e', 'e', 'ee']]  # 2/4 right, tie -> first seen right
  exp = type('Exp', (), {'tokenizer': None, 'task': REVERSE})
  got = adaptation.accuracy_at_k(exp, _FixedSamples(texts), None, problems, 4, temperature=1.0,
                                max_new_tokens=4)
  assert got == {'avg@4': 0.5, 'maj@4': 2 / 3}


def test_ttrl_config_refuses_a_vote_smaller_than_the_training_group():
  with pytest.raises(ValueError, match='vote_size=4 < group_size=8'):
    adaptation.TTRLConfig(group_size=8, vote_size=4)
  with pytest.raises(ValueError, match="TTRLConfig.reward='judge'"):
    adaptation.TTRLConfig(reward='judge')


@pytest.mark.xdist_group('refine_weak')
def test_ttrl_votes_over_more_samples_than_it_trains_on_and_the_upper_bound_reads_labels(weak):
  """One iteration each, shaped as the TTRL test above trains (16 x 8 rows) and as it answers,
  so the compiled programs are shared."""
  _, _, tt, initial, sampler = weak
  problems = _frontier(tt, seed=9)[:16]
  cfg = adaptation.TTRLConfig(num_iterations=1, prompts_per_iteration=16, group_size=8,
                             vote_size=16, max_new_tokens=MAX_NEW)
  step_fn = adaptation.ttrl_step(tt, cfg)
  run = lambda probs, c: adaptation.ttrl(tt, rounds.frozen_copy(initial), probs, c, answer_n=16,
                                        sampler=sampler, step_fn=step_fn)
  result = run([LabelTrap(p) for p in problems], cfg)
  assert result.samples == 16 * 16 and result.updates == 1  # Voted over 16 per problem ...
  assert result.history[0]['weight'] == 16 * 8  # ... trained on 8 (sequences).
  labelled = dataclasses.replace(cfg, reward='verifiable')
  with pytest.raises(AssertionError, match='read a reference answer'):
    run([LabelTrap(p) for p in problems], labelled)
  # Labels of other problems: the verifier says 0.
  shifted = [Problem(p.prompt, problems[(i + 1) % 16].answer, p.difficulty)
             for i, p in enumerate(problems)]
  assert run(shifted, labelled).history[0]['reward_mean'] == 0
  assert result.history[0]['reward_mean'] > 0  # The vote rewards agreement.

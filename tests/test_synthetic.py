"""Synthetic generation: filtering, de-duplication, solver and agreement labels, provenance."""

import jax
import pytest

from si_jax import models, sampling, tasks
from si_jax.acquisition import synthetic
from si_jax.tokenizers import Tokenizer
from tests.helpers import tiny_model_config

SEEDS = ['12+34=', '5+678=', '90+1=', '3+3=']


def _scripted(problems, answers=None):
  """A policy writing the given problem lines in turn, and answering from `answers`."""
  state = {'i': 0, 'calls': []}

  def policy(prompts, n):
    state['calls'].append((len(prompts), n))
    if n == 1 and all(p.endswith('\n') for p in prompts):  # writing problems
      out = []
      for _ in prompts:
        out.append([problems[state['i'] % len(problems)] + '\nmore text'])
        state['i'] += 1
      return out
    return [answers[p] for p in prompts]
  return policy, state


def test_filters_dedups_and_labels_with_the_solver():
  task = tasks.get_task('addition_reversed')
  lines = ['21+43=', '21+43=', '12+34=', 'junk', '7+8=', '+=', '99+1=']
  policy, _ = _scripted(lines)
  config = synthetic.SyntheticConfig(num_candidates=len(lines), k_shot=2, label='solver')
  examples, funnel = synthetic.generate_problems(policy, task, SEEDS, config, seed=0,
                                                 round_idx=3, model_step=40)
  assert funnel == {'sampled': 7, 'well_formed_new': 3, 'labelled': 3}
  assert [e['prompt'] for e in examples] == ['21+43=', '7+8=', '99+1=']
  for e in examples:
    assert e['completion'] == task.solve(e['prompt'])
    assert e['source'] == 'synthetic' and e['round'] == 3 and e['model_step'] == 40
    assert e['label_method'] == 'solver' and len(e['seed_prompts']) == 2
    assert set(e['seed_prompts']) <= set(SEEDS)
  assert examples[2]['completion'] == '001'  # 99 + 1 = 100, reversed and zero-padded


def test_agreement_labels_keep_only_confident_majorities():
  task = tasks.get_task('countdown')  # no solver: labels must come from agreement
  lines = ['3 5 7->22:', '2 4->8:']
  answers = {'3 5 7->22:': ['3*5+7', '3*5+7', '7+3*5 ', '3*5+7', '1'],
             '2 4->8:': ['2*4', '4+4', '8', '2+4+2', '4*2']}
  policy, state = _scripted(lines, answers)
  config = synthetic.SyntheticConfig(num_candidates=2, k_shot=2, label='agreement',
                                     answer_samples=5, min_agreement=0.6)
  examples, funnel = synthetic.generate_problems(
      policy, task, ['1 2->3:', '4 5->20:', '6 2->3:'], config, seed=1)
  assert funnel['well_formed_new'] == 2 and funnel['labelled'] == 1
  assert examples[0]['prompt'] == '3 5 7->22:' and examples[0]['completion'] == '3*5+7'
  assert examples[0]['agreement'] == pytest.approx(0.6)
  assert state['calls'] == [(2, 1), (2, 5)]  # one batched call per stage


def test_bad_config_is_named():
  with pytest.raises(ValueError, match='label'):
    synthetic.SyntheticConfig(label='oracle')
  policy, _ = _scripted(['1+1='])
  with pytest.raises(ValueError, match='k_shot'):
    synthetic.generate_problems(policy, tasks.get_task('addition'), ['1+1='],
                                synthetic.SyntheticConfig(k_shot=3), seed=0)


def test_sampler_policy_with_a_real_model():
  task = tasks.get_task('addition_reversed')
  tok = Tokenizer.train([task.alphabet()], 32)
  cfg = tiny_model_config()
  model, params = models.build(cfg, jax.random.PRNGKey(0))
  policy = synthetic.sampler_policy(sampling.Sampler(model), params, tok, max_new_tokens=8,
                                    strategy=sampling.Temperature(1.0), seed=0)
  examples, funnel = synthetic.generate_problems(
      policy, task, SEEDS, synthetic.SyntheticConfig(num_candidates=8, k_shot=2), seed=0)
  assert funnel['sampled'] == 8 and funnel['labelled'] == len(examples)
  assert all(task.is_well_formed(e['prompt']) for e in examples)

"""Synthetic generation: filtering, de-duplication, solver and agreement labels, provenance."""

import pytest

from si_jax import experiment, sampling, tasks
from si_jax.acquisition import synthetic
from si_jax.optimization import rounds
from tests.helpers import data_parallel, tiny_sft_config

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


def test_a_model_trained_on_the_few_shot_format_writes_new_solver_labelled_problems(tmp_path):
  """SFT on 'k problems, one per line -> the next one' teaches a tiny model to write problems:
  most of its candidates are then well-formed and new, and every one gets the solver's label
  (an untrained model's are not: the same call, before training, keeps few or none)."""
  config = data_parallel(tiny_sft_config(str(tmp_path)))
  config.tokenizer_extra_chars, config.data.seq_len = '\n', 48
  exp, state = experiment.setup(config, 120)
  task = exp.task
  problems = task.sample([0, 0], 120 * 32 + 4)
  shots = [[p.prompt for p in problems[i:i + 4]] for i in range(len(problems) - 4)]
  seeds = [p.prompt for p in task.sample([0, 1], 16)]
  sampler = sampling.Sampler(exp.model, exp.mesh)
  synth = synthetic.SyntheticConfig(num_candidates=64, k_shot=3)

  def written(params):
    policy = synthetic.sampler_policy(sampler, params, exp.tokenizer, max_new_tokens=12,
                                      strategy=sampling.Temperature(1.0), seed=0)
    return synthetic.generate_problems(policy, task, seeds, synth, seed=0, round_idx=1)

  _, untrained = written(state.params)
  state, _ = rounds.train_sft(exp, rounds.sft_step(exp), state,
                              [synthetic.few_shot_prompt(s[:3]) for s in shots],
                              [s[3] for s in shots], num_steps=120, batch_size=32, seed=0,
                              max_epochs=1)
  examples, funnel = written(state.params)
  exp.ckpt.close()
  print('synthetic funnel, untrained -> trained:', untrained, funnel)
  assert funnel['well_formed_new'] >= 32 > untrained['well_formed_new'], (untrained, funnel)
  assert funnel['labelled'] == len(examples) == funnel['well_formed_new']
  prompts = [e['prompt'] for e in examples]
  assert len(set(prompts)) == len(prompts) and not set(prompts) & set(seeds)
  assert all(task.is_well_formed(p) and e['completion'] == task.solve(p)
             for p, e in zip(prompts, examples))

"""GRPO and DPO update steps: sharded on a (2, 4) mesh == one device."""

import functools

import jax
import numpy as np
import pytest

from configs import base
from si_jax import optimizers, sharding, tasks, train_state
from si_jax.optimization import grpo, grpo_update, preference, rollout, train_step
from tests.helpers import tiny_model_config

RNG = np.random.default_rng(0)
B, P, N = 8, 5, 6


def _rollout():
  prompt_mask = np.ones((B, P), bool)
  prompt_mask[::3, :2] = False
  completion_mask = np.arange(N)[None] < RNG.integers(1, N + 1, B)[:, None]
  return {'prompt': RNG.integers(4, 32, (B, P)).astype(np.int32), 'prompt_mask': prompt_mask,
          'completion': RNG.integers(4, 32, (B, N)).astype(np.int32),
          'completion_mask': completion_mask}


def _grpo_batch():
  batch = _rollout()
  batch['advantages'] = RNG.normal(size=B).astype(np.float32)
  batch['old_logprobs'] = np.where(batch['completion_mask'],
                                   RNG.normal(size=(B, N)) - 3, 0).astype(np.float32)
  batch['ref_logprobs'] = batch['old_logprobs'] + 0.1
  return batch


def _dpo_batch():
  a, b = _rollout(), _rollout()
  return {'prompt': a['prompt'], 'prompt_mask': a['prompt_mask'],
          'chosen_completion': a['completion'], 'chosen_mask': a['completion_mask'],
          'rejected_completion': b['completion'], 'rejected_mask': b['completion_mask'],
          'ref_chosen': RNG.normal(size=B).astype(np.float32) - 10,
          'ref_rejected': RNG.normal(size=B).astype(np.float32) - 10}


OBJECTIVES = {
    'grpo': (functools.partial(grpo.grpo_loss, cfg=grpo.GRPOConfig(beta=0.05, eps_high=0.28)),
             _grpo_batch),
    'dpo': (functools.partial(preference.preference_loss,
                              cfg=preference.PreferenceConfig(loss='dpo', beta=0.1)), _dpo_batch),
}


def _run(objective, batches, mesh):
  loss, _ = OBJECTIVES[objective]
  opt_cfg = base.get_config().optimizer
  tx, schedule = optimizers.make_optimizer(opt_cfg, 10)
  model, state, shardings = train_state.create(tiny_model_config(), tx, mesh, seed=0)
  step = train_step.jit_train_step(train_step.make_train_step(
      lambda p, b: loss(model, p, b), tx, schedule), shardings, mesh)
  out = []
  for batch in batches:
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    out.append(jax.device_get(metrics))
  return jax.device_get(state.params), out


@pytest.mark.parametrize('objective', sorted(OBJECTIVES))
def test_step_on_mesh_equals_single_device(objective):
  batches = [OBJECTIVES[objective][1]() for _ in range(2)]
  ref_params, ref_metrics = _run(objective, batches, sharding.make_mesh({}, jax.devices()[:1]))
  params, metrics = _run(objective, batches, sharding.make_mesh({'data': 2, 'tensor': 4}))
  for got, want in zip(metrics, ref_metrics):
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               params, ref_params)
  assert ref_metrics[0]['loss'] != ref_metrics[1]['loss']


# --- One GRPO update's rollout: DAPO's dynamic sampling refills it ---------------------------


def _draws(rewards_per_draw, prompt_widths, expected_batches):
  """draw(attempt, batches) over made-up rollouts: draw a holds groups of 2 with the given
  rewards (as many groups as `batches` asks for), its prompts `prompt_widths[a]` wide, each
  row's tokens tagging (draw, group)."""
  def draw(attempt, batches):
    assert batches == expected_batches[attempt], (attempt, batches)
    r = np.asarray(rewards_per_draw[attempt], np.float32)
    groups, width = r.shape[0], prompt_widths[attempt]
    rows = groups * 2
    tag = (attempt * 10 + np.repeat(np.arange(groups), 2))[:, None]
    prompt_mask = np.zeros((rows, width), bool)
    prompt_mask[:, -3:] = True
    ro = rollout.Rollout(
        problems=[tasks.Problem(f'p{attempt}{g}', '', 1) for g in range(groups)], group_size=2,
        prompts=[f'p{attempt}{g}' for g in range(groups) for _ in range(2)],
        completions=['c'] * rows,
        arrays={'prompt': np.where(prompt_mask, tag, 0).astype(np.int32),
                'prompt_mask': prompt_mask,
                'completion': np.broadcast_to(tag, (rows, 4)).astype(np.int32),
                'completion_mask': np.ones((rows, 4), bool)},
        finish_reason=np.ones(rows, np.int32), sampler_logprobs=np.zeros((rows, 4), np.float32))
    return ro, r.reshape(-1)
  return draw


def test_dynamic_sampling_refills_the_update_with_informative_groups():
  """DAPO's Algorithm 1: draws go on until informative groups fill the update, each refill
  sized by the informative share seen so far."""
  rl = grpo_update.RLConfig(prompts_per_iteration=3, group_size=2, dynamic_sampling=True,
                            max_sample_batches=4)
  draws = [[[1, 1], [0, 1], [0, 0]],  # 1 batch: 1 of 3 informative, so the refill asks 2.
           [[0, 0], [1, 1], [1, 0], [1, 1], [0, 0], [0, 0]],  # 2 batches: 1 more.
           [[1, 0], [1, 0], [0, 1]]]  # The last batch of the budget: more than enough.
  ro, reward, host = grpo_update.collect(_draws(draws, [16, 32, 16], [1, 2, 1]), rl)
  assert [p.prompt for p in ro.problems] == ['p01', 'p12', 'p20']
  assert host == {'sample_batches': 4, 'sample_calls': 3, 'sampled_informative': 5 / 12,
                  'repeated_groups': 0}
  np.testing.assert_array_equal(reward, [0, 1, 1, 0, 1, 0])
  # Prompts stay right-aligned against the completion in the widest (32) layout.
  assert ro.arrays['prompt'].shape == (6, 32) and ro.arrays['prompt_mask'][:, -3:].all()
  np.testing.assert_array_equal(ro.arrays['prompt'][:, -1], [1, 1, 12, 12, 20, 20])
  np.testing.assert_array_equal(ro.arrays['completion'][:, 0], [1, 1, 12, 12, 20, 20])
  batch, _ = grpo_update.build_batch(ro, reward, rl)
  assert batch['completion_mask'].all() and (batch['advantages'] != 0).all()


def test_dynamic_sampling_short_of_groups_warns_and_repeats_them(caplog):
  """At the max_sample_batches budget the informative groups drawn fill the update by repeats:
  every row still trains, none is masked padding."""
  rl = grpo_update.RLConfig(prompts_per_iteration=3, group_size=2, dynamic_sampling=True,
                            max_sample_batches=2)
  draws = [[[1, 1], [0, 1], [0, 0]], [[0, 0], [1, 1], [1, 1]]]
  with caplog.at_level('WARNING'):
    ro, reward, host = grpo_update.collect(_draws(draws, [16, 16], [1, 1]), rl)
  assert 'config.rl.max_sample_batches' in caplog.text
  assert [p.prompt for p in ro.problems] == ['p01'] * 3
  assert host['repeated_groups'] == 2 / 3
  batch, _ = grpo_update.build_batch(ro, reward, rl)
  assert batch['completion_mask'].all() and (batch['advantages'] != 0).all()


def test_dynamic_sampling_without_any_informative_group_says_what_to_change():
  rl = grpo_update.RLConfig(prompts_per_iteration=2, group_size=2, dynamic_sampling=True,
                            max_sample_batches=2)
  draws = [[[1, 1], [0, 0]], [[0, 0], [0, 0]]]
  with pytest.raises(ValueError, match='config.rl.max_sample_batches=2.*dynamic_sampling=False'):
    grpo_update.collect(_draws(draws, [16, 16], [1, 1]), rl)


def test_soft_overlong_punishment_reaches_the_advantages():
  """Equal rewards, unequal lengths: DAPO's penalty makes the longer sample worse."""
  rl = grpo_update.RLConfig(prompts_per_iteration=1, group_size=2, max_new_tokens=4,
                            overlong_buffer=2)
  ro, reward = _draws([[[1, 1]]], [16], [1])(0, 1)
  ro.arrays['completion_mask'][1, 3:] = False  # 3 tokens: half-way into the buffer.
  ro, shaped, _ = grpo_update.collect(lambda *_: (ro, reward), rl)
  np.testing.assert_allclose(shaped, [0.0, 0.5])
  batch, _ = grpo_update.build_batch(ro, shaped, rl)
  assert batch['advantages'][1] > 0 > batch['advantages'][0]


def test_take_samples_keeps_the_first_of_every_group():
  ro, _ = _draws([[[1, 0], [0, 1]]], [16], [1])(0, 1)
  ro.arrays['completion'][:, 1] = np.arange(4)
  sub = ro.take_samples(1)
  assert sub.group_size == 1 and sub.prompts == ['p00', 'p01']
  np.testing.assert_array_equal(sub.arrays['completion'][:, 1], [0, 2])

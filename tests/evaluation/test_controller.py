"""The loop controller: every branch, the priority order, reasons with numbers, JSON state."""

import json

import pytest

from si_jax.evaluation import controller

CFG = controller.ControllerConfig(raise_at=0.8, patience=2, min_delta=0.01, regression_tol=0.1,
                                  real_data_ratio=0.3, max_difficulty=3)
COLLAPSE = {'collapse': {'flag': True, 'distinct': 0.12, 'threshold': 0.3}}


def run(rounds, cfg=CFG, state=None):
  """Feeds (score, confidence_by_difficulty, flags) per round; returns the decisions and state."""
  state = state or controller.ControllerState()
  decisions = []
  for r, (score, acc, flags) in enumerate(rounds):
    decision, state = controller.decide(state, r, score, acc, flags, cfg)
    decisions.append(decision)
  return decisions, state


def test_continue_then_raise_difficulty_up_to_the_maximum():
  decisions, state = run([(0.5, {1: 0.5}, {}), (0.6, {1: 0.85}, {}), (0.7, {2: 0.9}, {}),
                          (0.8, {3: 0.95}, {})])
  assert [d.action for d in decisions] == ['continue', 'raise_difficulty', 'raise_difficulty',
                                           'continue']  # 3 is the maximum.
  assert [d.difficulty for d in decisions] == [1, 2, 3, 3]
  assert '0.850' in decisions[1].reason and 'raise to 2' in decisions[1].reason
  assert (state.best_score, state.best_round, state.rounds_since_best) == (0.8, 3, 0)
  assert [h['action'] for h in state.history] == [d.action for d in decisions]
  assert [h['round'] for h in state.history] == [0, 1, 2, 3]


def test_missing_confidence_at_the_top_difficulty_continues():
  decisions, _ = run([(0.5, {}, {})])
  assert decisions[0].action == 'continue' and 'n/a' in decisions[0].reason


def test_regression_beyond_tolerance_rolls_back_to_the_best_round():
  decisions, state = run([(0.5, {1: 0.5}, {}), (0.7, {1: 0.5}, {}), (0.65, {1: 0.5}, {}),
                          (0.55, {1: 0.5}, {})])
  assert [d.action for d in decisions] == ['continue', 'continue', 'continue', 'rollback']
  assert decisions[2].rollback_to is None  # A drop of 0.05 is within tolerance 0.1.
  assert decisions[3].rollback_to == 1
  assert all(n in decisions[3].reason for n in ('0.550', '0.150', '0.700', '0.100', 'round 1'))
  assert (state.best_score, state.best_round) == (0.7, 1)
  # The same fall, when noise alone explains up to 0.2 of it, is no regression.
  noisy, _ = controller.decide(state, 4, 0.55, {1: 0.5}, {}, CFG, noise=0.2)
  assert noisy.action != 'rollback'


def test_planted_collapse_flag_mixes_real_data_back_in():
  decisions, state = run([(0.5, {1: 0.9}, {}), (0.6, {1: 0.9}, COLLAPSE)])
  decision = decisions[1]
  assert decision.action == 'mix_real_data'
  assert decision.mix_real == state.mix_real == CFG.real_data_ratio
  assert 'collapse' in decision.reason and 'distinct=0.12' in decision.reason
  assert '0.30' in decision.reason
  assert decisions[0].mix_real == 0.0
  # The mix stays on in later rounds.
  later, _ = controller.decide(state, 2, 0.7, {1: 0.5}, {}, CFG)
  assert later.action == 'continue' and later.mix_real == CFG.real_data_ratio


def test_reward_hacking_flag_also_mixes_real_data():
  flags = {'reward_hacking': {'flag': True, 'precision': 0.41}, 'collapse': {'flag': False}}
  decisions, _ = run([(0.5, {1: 0.5}, flags)])
  assert decisions[0].action == 'mix_real_data'
  assert 'reward_hacking' in decisions[0].reason and 'collapse' not in decisions[0].reason
  assert 'precision=0.41' in decisions[0].reason


def test_plateau_stops_after_patience_rounds():
  decisions, state = run([(0.5, {1: 0.5}, {}), (0.505, {1: 0.5}, {}), (0.5, {1: 0.5}, {})])
  assert [d.action for d in decisions] == ['continue', 'continue', 'stop']  # 0.005 < min_delta.
  assert state.rounds_since_best == 2 and state.best_round == 0
  assert 'plateau' in decisions[2].reason and '0.500' in decisions[2].reason
  assert 'patience 2' in decisions[2].reason


def test_priority_rollback_beats_collapse_beats_stop_beats_raise():
  history = [(0.9, {1: 0.5}, {}), (0.85, {1: 0.5}, {})]  # One round without improvement.
  _, state = run(history)
  # Regression, collapse, plateau and a raise all apply: rollback wins.
  d, _ = controller.decide(state, 2, 0.5, {1: 0.95}, COLLAPSE, CFG)
  assert d.action == 'rollback' and d.rollback_to == 0 and d.mix_real == 0.0
  # Collapse, plateau and a raise apply: collapse wins.
  d, _ = controller.decide(state, 2, 0.85, {1: 0.95}, COLLAPSE, CFG)
  assert d.action == 'mix_real_data' and d.difficulty == 1
  # Plateau and a raise apply: stop wins.
  d, _ = controller.decide(state, 2, 0.85, {1: 0.95}, {}, CFG)
  assert d.action == 'stop'


def test_decide_is_pure():
  _, state = run([(0.5, {1: 0.5}, {})])
  before = state.to_dict()
  controller.decide(state, 1, 0.9, {1: 0.9}, COLLAPSE, CFG)
  assert state.to_dict() == before


def test_state_json_round_trip():
  _, state = run([(0.5, {1: 0.9}, {}), (0.6, {2: 0.5}, COLLAPSE), (0.3, {2: 0.5}, {})])
  restored = controller.ControllerState.from_dict(json.loads(json.dumps(state.to_dict())))
  assert restored == state
  # A resumed run decides exactly as an uninterrupted one.
  assert (controller.decide(restored, 3, 0.7, {2: 0.9}, {}, CFG) ==
          controller.decide(state, 3, 0.7, {2: 0.9}, {}, CFG))


def test_invalid_inputs_raise():
  with pytest.raises(ValueError, match='finite'):
    controller.decide(controller.ControllerState(), 0, float('nan'), {}, {}, CFG)
  with pytest.raises(ValueError, match='real_data_ratio'):
    controller.ControllerConfig(real_data_ratio=1.0)
  with pytest.raises(ValueError, match='patience'):
    controller.ControllerConfig(patience=0)

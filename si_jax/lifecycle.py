"""The closed self-improvement loop (survey Fig. 1), assembled from config and resumable.

  python -m si_jax.main          # configs/self_train_arithmetic.py

A weak base model (trained on a small labelled seed set, the only labels of the run) improves
itself round by round:
  1. acquire   fresh problems from the task generator, at the controller's difficulty levels;
  2. generate  k samples per problem (sharded sampler, KV cache);
  3. label     by majority vote over the samples (no ground truth), or by the task's verifier
               (config switch `loop.label='verifier'`, the labelled ceiling);
  4. select    filters (label-free answer-shape check, agreement >= min_agreement), then an
               optional model-computed score (si_jax/selection) keeping the best fraction
               (LESS: aimed at the seed set's held-out slice);
  5. store     the round's examples durably (si_jax/data/store.py);
  6. optimize  SFT on the store under the data policy, plus real seed data;
  7. evaluate  the loop's model and a *tuned control* (the best model the seed set alone buys
               for the same step budget, si_jax/optimization/tuned_sft.py) on a fresh
               benchmark, reported only; and the label-free monitors (collapse, reward hacking);
  8. control   the controller decides the next round: continue, raise difficulty, mix real data,
               roll back to the best round, or stop.
No label of the loop's own problems reaches a decision or a training example in majority mode:
decisions read vote agreement, sample diversity and entropy, and a held-out slice of the seed
set (labels the run already paid for; select_score='less' aims at that slice too, so it then
steers the data as well as judging it); the benchmark's verifier only fills the report.
Every round ends with a checkpoint whose metadata holds the loop's whole state (round,
controller, monitoring vectors, selector, the control sweep), so a killed run resumes at the last
completed round and finishes with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import os

import numpy as np
import tqdm

from si_jax import checkpoint, experiment, report, sampling
from si_jax.acquisition import stage as acquisition
from si_jax.data.store import DataStore
from si_jax.evaluation import controller, stage as evaluation
from si_jax.optimization import rounds, stage as optimization, tuned_sft
from si_jax.selection import stage as selection


def check(loop) -> None:
  """Every config.loop key the stages read, named when wrong, before any work."""
  optimization.check(loop)
  selection.check(loop)
  if loop.start not in ('base', 'control'):
    raise ValueError(f"config.loop.start={loop.start!r} must be 'base' or 'control' (the tuned "
                     f'control arm, trained on the seed set alone)')


def run(config) -> dict:
  """The closed loop per `config.loop` (see configs/self_train_arithmetic.py)."""
  loop = config.loop
  check(loop)
  exp, state = experiment.setup(config, loop.num_rounds * loop.sft_steps)
  task, workdir, max_new = exp.task, config.workdir, loop.max_new_tokens
  seed_train, seed_val = experiment.seed_split(config, task)
  if not seed_val:
    raise ValueError('config.data.seed_validation_size must hold out part of the seed set: '
                     'the loop monitors itself and tunes its control on it')
  seed_examples = [optimization.seed_example(p) for p in seed_train]
  val_examples = [optimization.seed_example(p) for p in seed_val]  # LESS's target set.
  seed_prompts = [p.prompt for p in seed_train + seed_val]
  store = DataStore(os.path.join(workdir, 'store'))
  control_ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'control'), 1, async_save=False)
  progress = exp.meta.get('loop') or {
      'round': 0, 'history': [], 'validation': {}, 'control': None,  # The control's report.
      'controller': controller.ControllerState(
          difficulty=loop.start_difficulty or max(task.difficulties)).to_dict(),
      'selector': selection.init_selector(loop)}
  exp.writer.rewind(progress['history'][-1]['round'] if progress['history'] else -1)
  sampler = sampling.Sampler(exp.model, exp.mesh)
  step_fn = rounds.sft_step(exp)
  tb = report.TensorBoard(os.path.join(workdir, 'tensorboard'))

  def bench(r):
    return evaluation.benchmark_problems(task, loop, config.seed, r, store, seed_prompts)

  def validate(r, params):
    """The self arm's label-free signals on the seed set's held-out slice, kept by round."""
    signals = evaluation.validation_signals(exp, params, seed_val, max_new)
    progress['validation'][str(r)] = signals
    return {'validation_accuracy': float(np.mean(signals['correct'])),
            'validation_nll': float(np.mean(signals['nll']))}

  def finish_round(row, state):
    progress['history'].append(row)
    progress['round'] = row['round']
    report.log_round(exp.writer, tb, row)
    exp.save(row['round'], state, round=row['round'], loop=progress)

  try:
    # The tuned control: the best model the seed set alone buys for the loop's step budget.
    control_params, progress['control'] = tuned_sft.control_arm(
        exp, control_ckpt, state.params,
        ([ex['prompt'] for ex in seed_examples], [ex['completion'] for ex in seed_examples]),
        ([p.prompt for p in seed_val], [p.answer for p in seed_val]), loop, config.seed)

    if not progress['history']:  # Round 0: the base, and the self arm's starting point.
      problems = bench(0)
      base = evaluation.correctness(exp, state.params, problems, max_new)
      if loop.start == 'control':  # Self-improvement picks up where the seed set stops.
        state = state.replace(params=rounds.frozen_copy(control_params))
      finish_round({'round': 0, 'action': 'start',
                    'reason': f'the self arm starts from the {loop.start}',
                    'base': evaluation.by_level(problems, base),
                    **validate(0, state.params),
                    **evaluation.compare_arms(exp, problems, state.params, control_params,
                                              max_new)}, state)

    bar = tqdm.trange(progress['round'], loop.num_rounds, initial=progress['round'],
                      total=loop.num_rounds, desc='rounds')
    for r in bar:
      rnd = r + 1
      ctl = controller.ControllerState.from_dict(progress['controller'])
      # 1-2. Acquire fresh problems at the controller's levels; sample them (and rewrites).
      problems = acquisition.fresh_problems(task, loop, config.seed, rnd, ctl.difficulty)
      samples, out = acquisition.sample(sampler, state.params, exp.tokenizer, task, problems,
                                        loop, seed=config.seed * 7919 + rnd)
      # 3. Pseudo-label by vote.
      labelled, counts, stats = optimization.pseudo_label(task, loop, problems, samples, rnd,
                                                          int(state.step))
      reported = evaluation.label_report(task, problems, samples, labelled)
      if loop.rewrites and loop.train_rewrites:
        labelled = optimization.every_view(task, labelled)
      # 4. Select.
      kept, select_summary, picks = selection.select(
          exp, state.params, loop, labelled, progress['selector'], config.seed + rnd,
          target=val_examples, checkpoints=selection.less_checkpoints(exp, state, loop, rnd))
      # 5. Store (overwrite: a crash mid-round may have left this round written already).
      store.write_round(rnd, kept, overwrite=True)
      # 6. Optimize: SFT on the store under its policy, real data mixed in on request.
      train_set, num_real = optimization.training_set(
          store, rnd, loop.policy, max(ctl.mix_real, loop.seed_mix_ratio), seed_examples,
          [config.seed, 5, rnd])
      state, logged = optimization.train(exp, state, step_fn, train_set, loop,
                                         config.seed * 31 + rnd)
      # 7. Monitor (label-free) ...
      row = {'round': rnd, 'difficulty': ctl.difficulty, **counts, 'selected': len(kept),
             **stats, **reported, **select_summary, 'train_examples': len(train_set),
             'real_examples': num_real, 'train_loss': logged.get('loss', float('nan')),
             **evaluation.generation_signals(samples, out), **validate(rnd, state.params)}
      flags = evaluation.monitor_flags([*progress['history'][1:], row], progress['validation'],
                                       loop)
      row.update({f'{name}_flag': f['flag'] for name, f in flags.items()})
      # 8. ... and control, on label-free signals only.
      decision, ctl = evaluation.decide(ctl, row, flags, progress['validation'], loop, task)
      row.update(action=decision.action, reason=decision.reason)
      if picks is not None:  # The adaptive selector learns from the round's held-out gain.
        gain = progress['history'][-1]['validation_nll'] - row['validation_nll']
        progress['selector'] = selection.learn(progress['selector'], picks, gain)
      # Reported only: both arms on a fresh benchmark.
      row.update(evaluation.compare_arms(exp, bench(rnd), state.params, control_params, max_new))
      if decision.action == 'rollback':
        state = exp.restore(decision.rollback_to)
      progress['controller'] = ctl.to_dict()
      finish_round(row, state)
      bar.set_postfix(benchmark=f"{row['benchmark']:.2f}",
                      control=f"{row['control_benchmark']:.2f}", action=decision.action)
      if decision.action == 'stop' and loop.stop_on_plateau:
        break
  finally:
    exp.ckpt.close()
    control_ckpt.close()
    tb.close()
  table = report.round_table(progress['history'], task.difficulties)
  report.save(workdir, table, progress['history'], task.difficulties)
  print(table)
  first, last = progress['history'][0], progress['history'][-1]
  hardest = report.level_key(max(task.difficulties))
  return {'rounds': last['round'], 'base_hardest': first['base'][hardest],
          'self_hardest': last['self'][hardest], 'control_hardest': last['control'][hardest],
          'gain_over_control': last['gain_over_control'], 'control': progress['control'],
          'history': progress['history']}

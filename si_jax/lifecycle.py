"""The closed self-improvement loop (survey Fig. 1), assembled from config and resumable.

  python -m si_jax.main          # configs/self_train_arithmetic.py

A weak base model (trained on a small labelled seed set, the only labels of the run) improves
itself round by round:
  1. acquire   fresh problems from the task generator, at the controller's difficulty levels;
  2. generate  k samples per problem (sharded sampler, KV cache);
  3. label     by majority vote over the samples (no ground truth), or by the task's verifier
               (config switch `loop.label='verifier'`, the labelled ceiling);
  4. select    filters (label-free answer-shape check, agreement >= min_agreement), then an
               optional model-computed score (si_jax/selection) keeping the best fraction;
  5. store     the round's examples durably (si_jax/data/store.py);
  6. optimize  SFT on the store under the data policy, plus real seed data;
  7. evaluate  the loop's model and a *tuned control* (the best model the seed set alone buys
               for the same step budget, si_jax/optimization/tuned_sft.py) on a fresh
               benchmark, reported only; and the label-free monitors (collapse, reward hacking);
  8. control   the controller decides the next round: continue, raise difficulty, mix real data,
               roll back to the best round, or stop.
No label of the loop's own problems reaches a decision or a training example in majority mode:
decisions read vote agreement, sample diversity and entropy, and a held-out slice of the seed
set (labels the run already paid for); the benchmark's verifier only fills the report.
Every round ends with a checkpoint whose metadata holds the loop's whole state (round,
controller, monitoring vectors, selector, the control sweep), so a killed run resumes at the last
completed round and finishes with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import os

import numpy as np
import tqdm

from si_jax import checkpoint, experiment, report, sampling, train, train_state
from si_jax.data.store import DataStore
from si_jax.evaluation import accuracy, benchmark, controller, metrics as eval_metrics, monitors
from si_jax.optimization import rounds, tuned_sft
from si_jax.selection import adaptive, scores as selection_scores

LABELS = ('majority', 'verifier', 'format')
# Row fields computed with ground truth (the benchmark's verifier, the problems' reference
# answers): written to the report, never read by a decision or a training example.
REPORTED_ONLY = ('base', 'self', 'control', 'benchmark', 'control_benchmark', 'gain_over_control',
                 'label_accuracy', 'sampled_accuracy', 'gen_verification_gap')
SELECT_SCORES = ('', 'learnability', 'agreement', 'ifd', 'perplexity', 'entropy', 'adaptive')
_ADAPTIVE_FEATURES = ('agreement', 'learnability', 'ifd')


# --- Stages -------------------------------------------------------------------------------------


def acquire(task, loop, seed: int, round_idx: int, top: int) -> list:
  """Fresh problems at the controller's levels: loop.top_level_share of them at the top level
  `top` (where the model is learning), the rest uniform over the levels below it."""
  levels = [d for d in task.difficulties if d <= top] or [task.difficulties[0]]
  top, below = levels[-1], levels[:-1]
  rng = np.random.default_rng([seed, 3, round_idx])
  def level():
    return top if not below or rng.random() < loop.top_level_share else int(rng.choice(below))
  return [task.make_problem(rng, level()) for _ in range(loop.problems_per_round)]


def generate(sampler, params, tokenizer, task, problems, loop, seed: int):
  """loop.group_size samples of each problem, and as many of each of its equivalent rewrites
  when loop.rewrites (task.equivalent_prompts): (samples per problem, the sampler's output)."""
  views = [task.equivalent_prompts(p.prompt) if loop.rewrites else [p.prompt] for p in problems]
  prompts = [v for vs in views for v in vs]
  texts, out = sampler.generate(params, tokenizer, prompts, max_new_tokens=loop.max_new_tokens,
                                strategy=sampling.Temperature(loop.temperature),
                                n=loop.group_size, seed=seed)
  samples, i = [], 0
  for vs in views:
    samples.append([c for group in texts[i:i + len(vs)] for c in group])
    i += len(vs)
  return samples, out


def label(task, loop, problems, samples, round_idx: int, model_step: int):
  """(examples kept, per-filter counts, stats) from the samples of each problem.

  Majority: the most common answer among the samples (of the problem and its rewrites) that
  pass `task.plausible_answer` (a label-free shape check); kept when its share of all the
  problem's samples reaches loop.min_agreement.
  Verifier: a verified sample, whenever there is one (the labelled ceiling: every verified
  answer is kept, no agreement needed). Format: the first plausibly shaped sample, right or
  wrong -- a deliberately flawed reward, for planting reward hacking.
  The share (the reward's mean over the group) is the loop's proxy reward; the share of each
  level's problems that got a label is the controller's confidence at that level. Ground truth
  is otherwise read only for the report (label_accuracy, sampled_accuracy).
  """
  examples, counts = [], {'problems': len(problems), 'labelled': 0, 'plausible': 0, 'agreed': 0}
  correct, success_rates, proxy, kept_levels = [], [], [], []
  for problem, group in zip(problems, samples):
    k = len(group)
    answers = [task.extract_answer(c) for c in group]
    plausible = [a for a in answers if a is not None and task.plausible_answer(problem.prompt, a)]
    threshold = loop.min_agreement
    if loop.label == 'verifier':
      verified = [a for a in plausible if task.verify(problem, a) >= 1.0]
      answer, share = (verified[0], len(verified) / k) if verified else (None, 0.0)
      threshold = 0.0
    elif loop.label == 'format':
      answer, share = (plausible[0], len(plausible) / k) if plausible else (None, 0.0)
    elif plausible:  # Majority over the plausible answers; its share counts all k samples.
      answer, plausible_share = task.majority(plausible)
      share = float(plausible_share) * len(plausible) / k
    else:
      answer, share = None, 0.0
    success_rates.append(float(np.mean([task.verify(problem, c) for c in group])))  # Report.
    proxy.append(share)
    counts['labelled'] += any(a is not None for a in answers)
    kept = answer is not None and share >= threshold
    kept_levels.append(float(kept))
    if answer is None:
      continue
    counts['plausible'] += 1
    if not kept:
      continue
    counts['agreed'] += 1
    correct.append(answer == problem.answer)  # Report only.
    examples.append({
        'prompt': problem.prompt, 'completion': answer, 'reward': float(share),
        'scores': {'agreement': float(share), 'learnability': float(share * (1 - share))},
        'source': 'self', 'round': round_idx, 'model_step': model_step,
        'difficulty': problem.difficulty, 'successes': share * k, 'attempts': k})
  confidence = eval_metrics.by_difficulty(problems, kept_levels)
  stats = {'label_accuracy': float(np.mean(correct)) if correct else None,  # None: none kept.
           'sampled_accuracy': float(np.mean(success_rates)),
           'proxy_reward': float(np.mean(proxy)),
           'proxy_reward_se': float(np.std(proxy, ddof=1) / np.sqrt(len(proxy)))
                              if len(proxy) > 1 else 0.0,
           'confidence': _keyed(confidence)}
  return examples, counts, stats


def select(exp, params, loop, examples: list[dict], selector: adaptive.SelectorState | None,
           seed: int):
  """The loop's selection stage over the labelled examples: (kept, score summary, features)."""
  if not loop.select_score or not examples:
    return examples, {}, None
  n_keep = max(1, int(round(len(examples) * loop.select_fraction)))
  model_kwargs = dict(model=exp.model, params=params, tokenizer=exp.tokenizer, mesh=exp.mesh)
  if loop.select_score == 'adaptive':
    features = np.stack([_score(name, examples, model_kwargs) for name in _ADAPTIVE_FEATURES], 1)
    idx = adaptive.select(selector, features, n_keep, seed)
    values = adaptive.logits(selector, features)
  else:
    features = None
    values = _score(loop.select_score, examples, model_kwargs)
    idx = np.argsort(-values, kind='stable')[:n_keep]
  summary = {f'select_{q}': float(np.quantile(values, q / 100)) for q in (10, 50, 90)}
  return [examples[i] for i in sorted(idx)], summary, (features, idx)


def _score(name: str, examples, model_kwargs) -> np.ndarray:
  if name in ('agreement', 'learnability'):  # Computed while labelling.
    return np.asarray([ex['scores'][name] for ex in examples], np.float64)
  return np.asarray(selection_scores.compute(name, examples, **model_kwargs), np.float64)


def training_set(store: DataStore, round_idx: int, policy: str, real_ratio: float,
                 seed_examples: list[dict], seed) -> tuple[list[dict], int]:
  """The round's training examples under the store policy, with a `real_ratio` share of seed
  (real, labelled) examples sampled in: (examples, how many are real)."""
  examples = store.select(round_idx, policy)
  num_real = int(round(len(examples) * real_ratio / (1 - real_ratio))) if examples else 0
  if real_ratio > 0 and not examples:  # Nothing self-generated kept: the seed set alone.
    return list(seed_examples), len(seed_examples)
  rng = np.random.default_rng(seed)
  real = [seed_examples[i] for i in rng.choice(len(seed_examples), num_real, replace=True)]
  return examples + real, num_real


def train_arm(exp, state, step_fn, examples: list[dict], loop, seed: int):
  """loop.sft_steps SFT steps on the examples (none when there are none): (state, metrics)."""
  if not examples:
    return state, {}
  return rounds.fit_sft(exp, step_fn, state, [ex['prompt'] for ex in examples],
                        [ex['completion'] for ex in examples], num_steps=loop.sft_steps,
                        batch_size=loop.batch_size, seed=seed, max_epochs=loop.max_epochs)


def evaluate(exp, params, problems, max_new_tokens: int) -> list[float]:
  """Greedy correctness per benchmark problem (the verifier's reward: reported, never read by
  the loop's decisions)."""
  _, completions = accuracy.greedy_accuracy(exp.model, params, exp.tokenizer, exp.task, problems,
                                            max_new_tokens)
  return [exp.task.verify(p, c) for p, c in zip(problems, completions)]


def benchmark_problems(task, loop, seed: int, round_idx: int, store: DataStore,
                       seed_prompts: list[str]) -> list:
  """The round's benchmark: fresh problems never trained on, in the store or in the seed set,
  nor any equivalent rewrite of those (b+a of a stored a+b)."""
  trained = (benchmark.store_hashes(store, task.equivalent_prompts) |
             benchmark.prompt_hashes(seed_prompts, task.equivalent_prompts))
  return benchmark.fresh_benchmark(task, round_idx, seed, loop.eval_per_difficulty,
                                   exclude_hashes=trained)


# --- Label-free signals: what the loop's decisions may read -----------------------------------


def validation_signals(exp, params, problems, max_new_tokens: int) -> dict[str, list[float]]:
  """Per-example greedy correctness and NLL per token on the seed set's held-out slice: labels
  the run already paid for, on problems no round acquires, scored the same way every round so
  that two rounds compare example by example."""
  correct = evaluate(exp, params, problems, max_new_tokens)
  nll = tuned_sft.validation_loss(exp, params, [p.prompt for p in problems],
                                  [p.answer for p in problems])
  return {'correct': [float(c) for c in correct], 'nll': [float(x) for x in nll]}


def monitor_flags(history: list[dict], validation: dict, loop) -> dict[str, dict]:
  """Collapse and reward hacking, each flagged only beyond loop.monitor_z standard errors.

  history: the loop's rows since round 1 (diversity, entropy, proxy reward and its error);
  validation: the validation signals by round ('0' is the base).
  """
  last, first = history[-1], validation['0']
  now = validation[str(last['round'])]
  # Hacking builds up over rounds: compare with round 1, the first with a proxy reward.
  reference = history[0]
  then = validation[str(reference['round'])]
  return {
      'collapse': monitors.collapse(
          [h['diversity'] for h in history], [h['token_entropy'] for h in history],
          drop=loop.collapse_drop, nll_first=first['nll'], nll_last=now['nll'],
          z=loop.monitor_z, rise=loop.collapse_nll_rise),
      'reward_hacking': monitors.reward_hacking(
          (last['proxy_reward'], last['proxy_reward_se']),
          (reference['proxy_reward'], reference['proxy_reward_se']),
          then['correct'], now['correct'], z=loop.monitor_z, tol=loop.hacking_fall),
  }


# --- The loop -----------------------------------------------------------------------------------


def controller_config(loop, task) -> controller.ControllerConfig:
  c = loop.controller
  return controller.ControllerConfig(
      raise_at=c.raise_at, patience=c.patience, min_delta=c.min_delta,
      regression_tol=c.regression_tol, real_data_ratio=c.real_data_ratio,
      max_difficulty=max(task.difficulties))


def _check(loop):
  if loop.label not in LABELS:
    raise ValueError(f'config.loop.label={loop.label!r} is not one of {LABELS}')
  if loop.select_score not in SELECT_SCORES:
    raise ValueError(f'config.loop.select_score={loop.select_score!r} is not one of '
                     f'{SELECT_SCORES}')
  if loop.policy not in ('replace', 'accumulate'):
    raise ValueError(f"config.loop.policy={loop.policy!r} must be 'replace' or 'accumulate' "
                     f'(real data comes in through loop.seed_mix_ratio and the controller)')
  if not 0 <= loop.seed_mix_ratio < 1:
    raise ValueError(f'config.loop.seed_mix_ratio={loop.seed_mix_ratio} must be in [0, 1)')
  if loop.start not in ('base', 'control'):
    raise ValueError(f"config.loop.start={loop.start!r} must be 'base' or 'control' (the tuned "
                     f'control arm, trained on the seed set alone)')
  if not 0 < loop.select_fraction <= 1:
    raise ValueError(f'config.loop.select_fraction={loop.select_fraction} must be in (0, 1]')


def _seed_example(problem) -> dict:
  return {'prompt': problem.prompt, 'completion': problem.answer, 'reward': 1.0, 'scores': {},
          'source': 'seed', 'round': -1, 'model_step': 0}


def run(config) -> dict:
  """The closed loop per `config.loop` (see configs/self_train_arithmetic.py)."""
  loop = config.loop
  _check(loop)
  grid = tuned_sft.candidates(loop.control_arm.learning_rates, loop.control_arm.schedules)
  exp = experiment.setup(config, loop.num_rounds * loop.sft_steps)
  task, workdir = exp.task, config.workdir
  seed_train, seed_val = train.seed_split(config, task)
  if not seed_val:
    raise ValueError('config.data.seed_validation_size must hold out part of the seed set: '
                     'the loop monitors itself and tunes its control on it')
  seed_examples = [_seed_example(p) for p in seed_train]
  seed_prompts = [p.prompt for p in seed_train + seed_val]
  val_pairs = ([p.prompt for p in seed_val], [p.answer for p in seed_val])
  store = DataStore(os.path.join(workdir, 'store'))
  control_ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'control'), 1, async_save=False)
  progress = exp.meta.get('loop') or {
      'round': 0, 'controller': controller.ControllerState(
          difficulty=loop.start_difficulty or max(task.difficulties)).to_dict(),
      'history': [], 'validation': {}, 'control': None,  # The control sweep's report.
      'selector': (adaptive.SelectorState.init(_ADAPTIVE_FEATURES).to_dict()
                   if loop.select_score == 'adaptive' else None)}
  exp.writer.rewind(progress['history'][-1]['round'] if progress['history'] else -1)
  ctl_cfg = controller_config(loop, task)
  sampler = sampling.Sampler(exp.model, exp.mesh)
  step_fn = rounds.sft_step(exp)
  max_new = loop.max_new_tokens
  state = exp.state
  tb = report.TensorBoard(os.path.join(workdir, 'tensorboard'))

  def bench(r):
    return benchmark_problems(task, loop, config.seed, r, store, seed_prompts)

  def checkpoint_round(r):
    exp.state = state
    exp.save(r, round=r, loop=progress)

  try:
    # --- The tuned control: the best model the seed set alone buys for the same budget ---
    if control_ckpt.latest_step() is None:  # Swept once per run, before round 1.
      control_params, sweep = tuned_sft.sweep(
          exp, state.params, ([ex['prompt'] for ex in seed_examples],
                              [ex['completion'] for ex in seed_examples]),
          val_pairs, grid, num_rounds=loop.num_rounds, round_steps=loop.sft_steps,
          batch_size=loop.batch_size, seed=config.seed)
      control_ckpt.save(0, {'params': control_params}, sweep, force=True)
    else:
      control_params, _ = control_ckpt.restore_params(
          train_state.state_shardings(exp.model.cfg, exp.tx, exp.mesh)[0].params,
          exp.shardings.params, step=0)
    progress['control'] = control_ckpt.read_meta(0)

    def evaluate_round(r, row):
      """Both arms on round r's fresh benchmark (reported only)."""
      problems = bench(r)
      self_correct = evaluate(exp, state.params, problems, max_new)
      control_correct = evaluate(exp, control_params, problems, max_new)
      row['self'] = _keyed(eval_metrics.by_difficulty(problems, self_correct))
      row['control'] = _keyed(eval_metrics.by_difficulty(problems, control_correct))
      row['benchmark'] = float(np.mean(list(row['self'].values())))
      row['control_benchmark'] = float(np.mean(list(row['control'].values())))
      hardest = [i for i, p in enumerate(problems) if p.difficulty == max(task.difficulties)]
      row['gain_over_control'] = eval_metrics.paired_interval(
          [control_correct[i] for i in hardest], [self_correct[i] for i in hardest])

    def validate_round(r, row):
      """The self arm's label-free signals on the seed set's held-out slice."""
      signals = validation_signals(exp, state.params, seed_val, max_new)
      progress['validation'][str(r)] = signals
      row['validation_accuracy'] = float(np.mean(signals['correct']))
      row['validation_nll'] = float(np.mean(signals['nll']))

    if not progress['history']:  # Round 0: the base, and the self arm's starting point.
      row = {'round': 0, 'action': 'start', 'reason': f'the self arm starts from the {loop.start}'}
      problems = bench(0)
      row['base'] = _keyed(eval_metrics.by_difficulty(
          problems, evaluate(exp, state.params, problems, max_new)))
      if loop.start == 'control':  # Self-improvement picks up where the seed set stops.
        state = state.replace(params=rounds.frozen_copy(control_params))
      validate_round(0, row)
      evaluate_round(0, row)
      progress['history'].append(row)
      report.log_round(exp.writer, tb, row)
      checkpoint_round(0)
    bar = tqdm.trange(progress['round'], loop.num_rounds, initial=progress['round'],
                      total=loop.num_rounds, desc='rounds')
    for r in bar:
      rnd = r + 1
      ctl = controller.ControllerState.from_dict(progress['controller'])
      # 1-3: acquire, generate, label.
      problems = acquire(task, loop, config.seed, rnd, ctl.difficulty)
      texts, out = generate(sampler, state.params, exp.tokenizer, task, problems, loop,
                            seed=config.seed * 7919 + rnd)
      examples, counts, stats = label(task, loop, problems, texts, rnd, int(state.step))
      if loop.rewrites and loop.train_rewrites:  # Every view of a kept problem, one label.
        examples = [{**ex, 'prompt': view} for ex in examples
                    for view in task.equivalent_prompts(ex['prompt'])]
      # 4: select.
      selector = (adaptive.SelectorState.from_dict(progress['selector'])
                  if progress['selector'] else None)
      examples, select_summary, picked = select(exp, state.params, loop, examples, selector,
                                                config.seed + rnd)
      counts['selected'] = len(examples)
      # 5: store (overwrite: a crash mid-round may have left this round written already).
      store.write_round(rnd, examples, overwrite=True)
      # 6: optimize.
      train_set, num_real = training_set(store, rnd, loop.policy, max(ctl.mix_real,
                                                                      loop.seed_mix_ratio),
                                         seed_examples, [config.seed, 5, rnd])
      state, logged = train_arm(exp, state, step_fn, train_set, loop, config.seed * 31 + rnd)
      # 7: monitor (label-free) and evaluate (reported only).
      flat = [c for group in texts for c in group]
      mask = np.arange(out.tokens.shape[1])[None] < out.lengths[:, None]
      row = {'round': rnd, 'difficulty': ctl.difficulty, **counts, **stats, **select_summary,
             'train_examples': len(train_set), 'real_examples': num_real,
             'train_loss': logged.get('loss', float('nan')),
             'diversity': float(np.mean([len(set(group)) / len(group) for group in texts])),
             'distinct_2': monitors.distinct_n(flat, 2),
             'token_entropy': monitors.token_entropy(-np.asarray(out.sampling_logprobs), mask),
             'gen_verification_gap': _gap(task, problems, texts)}
      validate_round(rnd, row)
      flags = monitor_flags([*progress['history'][1:], row], progress['validation'], loop)
      row.update({f'{name}_flag': f['flag'] for name, f in flags.items()})
      # 8: control, on label-free signals only.
      confidence = {int(k[1:]): v for k, v in stats['confidence'].items()}
      noise = 0.0  # A fall from the best round within z paired standard errors is noise.
      if ctl.best_round is not None:
        noise = loop.monitor_z * eval_metrics.paired_change(
            progress['validation'][str(ctl.best_round)]['correct'],
            progress['validation'][str(rnd)]['correct'])[1]
      decision, ctl = controller.decide(ctl, rnd, row['validation_accuracy'], confidence, flags,
                                        ctl_cfg, noise)
      row.update(action=decision.action, reason=decision.reason)
      if picked is not None and picked[0] is not None:  # The adaptive selector learns progress.
        gain = progress['history'][-1]['validation_nll'] - row['validation_nll']
        selector = adaptive.update(selector, picked[0], picked[1], gain)
        progress['selector'] = selector.to_dict()
      evaluate_round(rnd, row)
      if decision.action == 'rollback':
        state = _restore(exp, decision.rollback_to)
      progress['history'].append(row)
      progress['controller'] = ctl.to_dict()
      progress['round'] = rnd
      report.log_round(exp.writer, tb, row)
      checkpoint_round(rnd)
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


def _keyed(per_level: dict[int, float]) -> dict[str, float]:
  """JSON-safe keys ('d<level>'): the history lives in checkpoint metadata."""
  return {report.level_key(d): v for d, v in per_level.items()}


def _gap(task, problems, texts) -> float:
  """pass@k - pass@1 on the round's problems, k the smallest group (verified: reporting only,
  never trained on)."""
  c = np.asarray([sum(task.verify(p, t) >= 1.0 for t in group)
                  for p, group in zip(problems, texts)])
  n = np.asarray([len(group) for group in texts])
  k = int(n.min())
  return monitors.gen_verification_gap(eval_metrics.pass_at_k(n, c, k),
                                       eval_metrics.pass_at_k(n, c, 1))


def _restore(exp, round_idx: int) -> train_state.TrainState:
  if round_idx not in exp.ckpt.all_steps():
    raise FileNotFoundError(
        f'rollback to round {round_idx}: its checkpoint is gone; raise '
        f'config.checkpoint.max_to_keep (>= loop.num_rounds + 1 keeps every round)')
  abstract, _ = train_state.state_shardings(exp.model.cfg, exp.tx, exp.mesh)
  state, _ = exp.ckpt.restore(abstract, exp.shardings, step=round_idx)
  return state

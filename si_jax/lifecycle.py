"""The closed self-improvement loop (survey Fig. 1), assembled from config and resumable.

  python -m si_jax.main          # configs/self_train_arithmetic.py

A weak base model (trained on a small labelled seed set, the only labels of the run) improves
itself round by round:
  1. acquire   fresh problems from the task generator, at the controller's difficulty levels;
  2. generate  k samples per problem (sharded sampler, KV cache);
  3. label     by majority vote over the samples (no ground truth), or by the task's verifier
               (config switch `loop.label='verifier'`);
  4. select    filters (label-free answer-shape check, agreement >= min_agreement), then an
               optional model-computed score (si_jax/selection) keeping the best fraction;
  5. store     the round's examples durably (si_jax/data/store.py);
  6. optimize  SFT on the store under the data policy, plus real seed data when the controller
               mixes it in; a *control arm* takes the same number of steps on the seed set only,
               so a gain over it comes from the self-generated data, not from more steps;
  7. evaluate  both arms on a fresh benchmark (problems never in the store; ground truth used for
               evaluation only) and run the monitors (collapse, reward hacking, gen-verif gap);
  8. control   the controller decides the next round: continue, raise difficulty, mix real data,
               roll back to the best round, or stop.
Every round ends with a checkpoint of both arms whose metadata holds the loop's whole state
(round, controller, monitor histories, selector), so a killed run resumes at the last completed
round and finishes with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tqdm

from si_jax import checkpoint, experiment, report, sampling, train, train_state
from si_jax.data.store import DataStore
from si_jax.evaluation import accuracy, benchmark, controller, metrics as eval_metrics, monitors
from si_jax.optimization import rewards, rounds
from si_jax.selection import adaptive, scores as selection_scores

LABELS = ('majority', 'verifier', 'format')
SELECT_SCORES = ('', 'learnability', 'agreement', 'ifd', 'perplexity', 'entropy', 'adaptive')
_ADAPTIVE_FEATURES = ('agreement', 'learnability', 'ifd')


@dataclasses.dataclass
class Arm:
  """A model trained by the loop: 'self' (on its own data) or 'control' (seed set only)."""
  name: str
  state: train_state.TrainState
  ckpt: checkpoint.Checkpointer


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
  """(examples kept, per-filter counts, reporting stats) from the samples of each problem.

  Majority: the most common answer among the samples (of the problem and its rewrites) that
  pass `task.plausible_answer` (a label-free shape check); kept when its share of all the
  problem's samples reaches loop.min_agreement.
  Verifier: the first verified sample (the verifiable-reward variant). Format: the first
  plausibly shaped sample, right or wrong -- a deliberately flawed reward, for studying reward
  hacking. The share (the reward's mean over the group) is the loop's proxy reward. Ground
  truth is otherwise read only for what is reported (label_accuracy, sampled_accuracy).
  """
  examples, counts = [], {'problems': len(problems), 'labelled': 0, 'plausible': 0, 'agreed': 0}
  correct, success_rates, proxy = [], [], []
  for problem, group in zip(problems, samples):
    k = len(group)
    answers = [task.extract_answer(c) for c in group]
    plausible = [a for a in answers if a is not None and task.plausible_answer(problem.prompt, a)]
    if loop.label == 'verifier':
      verified = [a for a in plausible if task.verify(problem, a) >= 1.0]
      answer, share = (verified[0], len(verified) / k) if verified else (None, 0.0)
    elif loop.label == 'format':
      answer, share = (plausible[0], len(plausible) / k) if plausible else (None, 0.0)
    elif plausible:  # Majority over the plausible answers; its share counts all k samples.
      (answer,), (plausible_share,) = rewards.majority_labels(task, plausible, len(plausible))
      share = float(plausible_share) * len(plausible) / k
    else:
      answer, share = None, 0.0
    success_rates.append(float(np.mean([task.verify(problem, c) for c in group])))
    proxy.append(share)
    counts['labelled'] += any(a is not None for a in answers)
    if answer is None:
      continue
    counts['plausible'] += 1
    if share < loop.min_agreement:
      continue
    counts['agreed'] += 1
    correct.append(answer == problem.answer)
    examples.append({
        'prompt': problem.prompt, 'completion': answer, 'reward': float(share),
        'scores': {'agreement': float(share), 'learnability': float(share * (1 - share))},
        'source': 'self', 'round': round_idx, 'model_step': model_step,
        'difficulty': problem.difficulty, 'successes': share * k, 'attempts': k})
  stats = {'label_accuracy': float(np.mean(correct)) if correct else None,  # None: none kept.
           'sampled_accuracy': float(np.mean(success_rates)),
           'proxy_reward': float(np.mean(proxy))}
  return examples, counts, stats


def select(exp, loop, examples: list[dict], selector: adaptive.SelectorState | None, seed: int):
  """The loop's selection stage over the labelled examples: (kept, score summary, features)."""
  if not loop.select_score or not examples:
    return examples, {}, None
  n_keep = max(1, int(round(len(examples) * loop.select_fraction)))
  model_kwargs = dict(model=exp.model, params=exp.state.params, tokenizer=exp.tokenizer,
                      mesh=exp.mesh)
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


def train_arm(exp, arm: Arm, step_fn, examples: list[dict], loop, seed: int) -> dict:
  """loop.sft_steps SFT steps of `arm` on the examples (none when there are none)."""
  if not examples:
    return {}
  exp.state = arm.state
  logged = rounds.train_sft(exp, step_fn, [ex['prompt'] for ex in examples],
                            [ex['completion'] for ex in examples], num_steps=loop.sft_steps,
                            batch_size=loop.batch_size, seed=seed, max_epochs=loop.max_epochs)
  arm.state = exp.state
  return logged


def evaluate(exp, params, problems, max_new_tokens: int) -> tuple[float, dict[int, float]]:
  """Greedy accuracy on the benchmark: (mean over levels, per level keyed by difficulty)."""
  _, completions = accuracy.greedy_accuracy(exp.model, params, exp.tokenizer, exp.task, problems,
                                            max_new_tokens)
  correct = [exp.task.verify(p, c) for p, c in zip(problems, completions)]
  per_level = eval_metrics.by_difficulty(problems, correct)
  return float(np.mean(list(per_level.values()))), per_level


def benchmark_problems(task, loop, seed: int, round_idx: int, store: DataStore,
                       seed_examples: list[dict]) -> list:
  """The round's benchmark: fresh problems never trained on, in the store or in the seed set."""
  trained = benchmark.store_hashes(store) | {benchmark.prompt_hash(ex['prompt'])
                                             for ex in seed_examples}
  return benchmark.fresh_benchmark(task, round_idx, seed, loop.eval_per_difficulty,
                                   exclude_hashes=trained)


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
  if not 0 < loop.select_fraction <= 1:
    raise ValueError(f'config.loop.select_fraction={loop.select_fraction} must be in (0, 1]')


def run(config) -> dict:
  """The closed loop per `config.loop` (see configs/self_train_arithmetic.py)."""
  loop = config.loop
  _check(loop)
  exp = experiment.setup(config, loop.num_rounds * loop.sft_steps)
  task, workdir = exp.task, config.workdir
  seed_examples = [{'prompt': p.prompt, 'completion': p.answer, 'reward': 1.0, 'scores': {},
                    'source': 'seed', 'round': -1, 'model_step': 0}
                   for p in train.seed_set(config, task)]
  heldout = accuracy.sample_problems(task, [config.seed, 1], loop.heldout_size)
  store = DataStore(os.path.join(workdir, 'store'))
  control = Arm('control', rounds.frozen_copy(exp.state), checkpoint.Checkpointer(
      os.path.join(workdir, 'control'), config.checkpoint.max_to_keep, async_save=False))
  arm = Arm('self', exp.state, exp.ckpt)
  if exp.resumed:
    abstract, _ = train_state.state_shardings(exp.model.cfg, exp.tx, exp.mesh)
    control.state, _ = control.ckpt.restore(abstract, exp.shardings, step=exp.meta['round'])
  progress = exp.meta.get('loop') or {
      'round': 0, 'controller': controller.ControllerState(
          difficulty=loop.start_difficulty or max(task.difficulties)).to_dict(),
      'history': [], 'selector': (adaptive.SelectorState.init(_ADAPTIVE_FEATURES).to_dict()
                                  if loop.select_score == 'adaptive' else None)}
  ctl_cfg = controller_config(loop, task)
  sampler = sampling.Sampler(exp.model, exp.mesh)
  step_fn = rounds.sft_step(exp)
  max_new = loop.max_new_tokens
  tb = report.TensorBoard(os.path.join(workdir, 'tensorboard'))

  def bench(r):
    return benchmark_problems(task, loop, config.seed, r, store, seed_examples)

  def checkpoint_round(r):
    exp.state = arm.state
    exp.save(r, round=r, loop=progress)
    control.ckpt.save(r, control.state, {'round': r}, force=True)

  try:
    if not progress['history']:  # Round 0: the base model, both arms alike.
      score, per_level = evaluate(exp, arm.state.params, bench(0), max_new)
      row = {'round': 0, 'self': _keyed(per_level), 'control': _keyed(per_level), 'score': score,
             'control_score': score, 'action': 'start', 'reason': 'base model'}
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
      texts, out = generate(sampler, arm.state.params, exp.tokenizer, task, problems, loop,
                            seed=config.seed * 7919 + rnd)
      examples, counts, stats = label(task, loop, problems, texts, rnd, int(arm.state.step))
      if loop.rewrites and loop.train_rewrites:  # Every view of a kept problem, one label.
        examples = [{**ex, 'prompt': view} for ex in examples
                    for view in task.equivalent_prompts(ex['prompt'])]
      # 4: select.
      selector = (adaptive.SelectorState.from_dict(progress['selector'])
                  if progress['selector'] else None)
      examples, select_summary, picked = select(exp, loop, examples, selector, config.seed + rnd)
      counts['selected'] = len(examples)
      # 5: store (overwrite: a crash mid-round may have left this round written already).
      store.write_round(rnd, examples, overwrite=True)
      # 6: optimize both arms with the same number of steps.
      train_set, num_real = training_set(store, rnd, loop.policy, max(ctl.mix_real,
                                                                      loop.seed_mix_ratio),
                                         seed_examples, [config.seed, 5, rnd])
      logged = train_arm(exp, arm, step_fn, train_set, loop, config.seed * 31 + rnd)
      train_arm(exp, control, step_fn, seed_examples, loop, config.seed * 37 + rnd)
      # 7: evaluate and monitor.
      problems_eval = bench(rnd)
      score, per_level = evaluate(exp, arm.state.params, problems_eval, max_new)
      control_score, control_levels = evaluate(exp, control.state.params, problems_eval, max_new)
      flat = [c for group in texts for c in group]
      mask = np.arange(out.tokens.shape[1])[None] < out.lengths[:, None]
      row = {'round': rnd, 'difficulty': ctl.difficulty, 'self': _keyed(per_level),
             'control': _keyed(control_levels), 'score': score, 'control_score': control_score,
             **counts, **stats, **select_summary, 'train_examples': len(train_set),
             'real_examples': num_real,
             'train_loss': logged.get('loss', float('nan')),
             'diversity': float(np.mean([len(set(group)) / len(group) for group in texts])),
             'distinct_2': monitors.distinct_n(flat, 2),
             'token_entropy': monitors.token_entropy(-np.asarray(out.sampling_logprobs), mask),
             'heldout_perplexity': monitors.perplexity(
                 exp.model, arm.state.params, exp.tokenizer, [p.prompt for p in heldout],
                 [p.answer for p in heldout]),
             'gen_verification_gap': _gap(task, problems, texts)}
      history = [*progress['history'][1:], row]
      flags = {
          'collapse': collapse_flag(history, loop),
          'reward_hacking': monitors.reward_hacking([h['proxy_reward'] for h in history],
                                                    [h['score'] for h in history]),
      }
      row.update({f'{name}_flag': f['flag'] for name, f in flags.items()})
      # 8: control.
      decision, ctl = controller.decide(ctl, rnd, score, per_level, flags, ctl_cfg)
      row.update(action=decision.action, reason=decision.reason)
      if picked is not None and picked[0] is not None:  # The adaptive selector learns progress.
        gain = score - progress['history'][-1]['score']
        selector = adaptive.update(selector, picked[0], picked[1], gain)
        progress['selector'] = selector.to_dict()
      if decision.action == 'rollback':
        arm.state = _restore(exp, decision.rollback_to)
      progress['history'].append(row)
      progress['controller'] = ctl.to_dict()
      progress['round'] = rnd
      report.log_round(exp.writer, tb, row)
      checkpoint_round(rnd)
      bar.set_postfix(score=f'{score:.2f}', control=f'{control_score:.2f}',
                      action=decision.action)
      if decision.action == 'stop' and loop.stop_on_plateau:
        break
  finally:
    exp.ckpt.close()
    control.ckpt.close()
    tb.close()
  table = report.round_table(progress['history'], task.difficulties)
  report.save(workdir, table, progress['history'], task.difficulties)
  print(table)
  first, last = progress['history'][0], progress['history'][-1]
  hardest = report.level_key(max(task.difficulties))
  return {'rounds': last['round'], 'base_hardest': first['self'][hardest],
          'self_hardest': last['self'][hardest], 'control_hardest': last['control'][hardest],
          'base_score': first['score'], 'self_score': last['score'],
          'control_score': last['control_score'], 'history': progress['history']}


def collapse_flag(history: list[dict], loop) -> dict:
  """Collapse: the samples narrowed (diversity or entropy fell by loop.collapse_drop since the
  first round) *and* real held-out data got less likely (perplexity rose by more than
  loop.collapse_perplexity_rise). Narrowing alone is also what healthy learning looks like."""
  flag = monitors.collapse([h['diversity'] for h in history],
                           [h['token_entropy'] for h in history], drop=loop.collapse_drop)
  first, last = history[0]['heldout_perplexity'], history[-1]['heldout_perplexity']
  rose = last > first * (1 + loop.collapse_perplexity_rise)
  return {**flag, 'flag': flag['flag'] and rose, 'perplexity_first': first,
          'perplexity_last': last,
          'reason': f"{flag['reason']}; held-out perplexity {first:.3f} -> {last:.3f}"}


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

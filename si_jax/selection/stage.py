"""Selection's part of a self-improvement round (si_jax/lifecycle.py, step 4).

Ranks the round's pseudo-labelled examples by one model-computed score (si_jax/selection/scores)
and keeps loop.select_fraction of them; 'adaptive' instead draws them from a selector that learns
which scores predict the loop's progress on its held-out slice (si_jax/selection/adaptive.py).
The selector's state travels in the loop's checkpoint (`init_selector` / `learn`).
'less' (Xia et al. 2024) ranks by how well each example's Adam update aligns with the gradient
of a target set (the loop passes its seed set's held-out slice), averaged over Adam checkpoints:
the loop's current train state and its last rounds' (`less_checkpoints`).
"""

from __future__ import annotations

import numpy as np

from si_jax.selection import adaptive, scores, selectors

SELECT_SCORES = ('', 'uncertainty', 'agreement', 'ifd', 'perplexity', 'entropy', 'adaptive',
                 'less')
ADAPTIVE_FEATURES = ('agreement', 'uncertainty', 'ifd')
_FROM_LABELLING = ('agreement', 'uncertainty')  # Computed while pseudo-labelling.


def check(loop) -> None:
  """The keys of config.loop this stage reads, named when wrong."""
  if loop.select_score in scores.RENAMED:
    raise ValueError(f'config.loop.select_score={loop.select_score!r} was renamed: use '
                     f'{scores.RENAMED[loop.select_score]!r}')
  if loop.select_score not in SELECT_SCORES:
    raise ValueError(f'config.loop.select_score={loop.select_score!r} is not one of '
                     f'{SELECT_SCORES}')
  if not 0 < loop.select_fraction <= 1:
    raise ValueError(f'config.loop.select_fraction={loop.select_fraction} must be in (0, 1]')
  for key in ('less_checkpoints', 'less_dim'):
    if not (isinstance(loop[key], int) and loop[key] >= 1):
      raise ValueError(f'config.loop.{key}={loop[key]!r} must be an integer >= 1')


def init_selector(loop) -> dict | None:
  """The adaptive selector's starting state (JSON, for the checkpoint), or None."""
  if loop.select_score != 'adaptive':
    return None
  return adaptive.SelectorState.init(ADAPTIVE_FEATURES).to_dict()


def less_checkpoints(exp, state, loop, round_idx: int) -> list[scores.AdamCheckpoint]:
  """LESS's checkpoints before round `round_idx` trains (none unless select_score='less'): the
  states saved at the ends of the loop.less_checkpoints - 1 rounds before the last (`exp.restore`,
  as saved: after a rollback, the abandoned rounds' among them), then the current train state.

  Each is weighted by the mean learning rate of the loop.sft_steps updates that led to it (LESS:
  of the epoch the checkpoint closes), not exp.schedule(state.step): with one schedule cycle per
  round (config.optimizer.restart_every) that is the next warmup's 0 at every round's end. A
  state no round has trained yet (step 0) takes the first round's mean. Its optimizer may be
  fresh (a warm start: count 0, zero moments): Adam's first step is then m = g, v = g * g, the
  direction sign(g), as training's own first step would be.
  """
  if loop.select_score != 'less':
    return []
  opt = exp.config.optimizer
  first = max(round_idx - loop.less_checkpoints, 0)
  states = [exp.restore(r) for r in range(first, round_idx - 1)] + [state]
  def checkpoint(s):
    start = max(int(s.step) - loop.sft_steps, 0)
    lr = float(np.mean(exp.schedule(np.arange(start, start + loop.sft_steps))))
    return scores.adam_checkpoint(s.params, s.opt_state, lr, b1=opt.b1, b2=opt.b2, eps=opt.eps)
  return [checkpoint(s) for s in states]


def select(exp, params, loop, examples: list[dict], selector: dict | None, seed: int, *,
           target: list[dict] = (), checkpoints: list[scores.AdamCheckpoint] = ()):
  """(kept examples, score quantiles, the picks for `learn` or None). 'less' reads `target`
  (examples of what to get better at) and `checkpoints` (`less_checkpoints`), not `params`."""
  if not loop.select_score or not examples:
    return examples, {}, None
  n_keep = max(1, int(round(len(examples) * loop.select_fraction)))
  model_kwargs = dict(model=exp.model, params=params, tokenizer=exp.tokenizer, mesh=exp.mesh)
  picks = None
  if loop.select_score == 'adaptive':
    state = adaptive.SelectorState.from_dict(selector)
    features = np.stack([_score(name, examples, model_kwargs) for name in ADAPTIVE_FEATURES], 1)
    idx = adaptive.select(state, features, n_keep, seed)
    values = adaptive.logits(state, features)
    picks = (features, idx)
  elif loop.select_score == 'less':
    values = scores.less(examples, target=target, checkpoints=checkpoints, dim=loop.less_dim,
                         seed=seed, **model_kwargs)
    idx = selectors.top_k(values, n_keep)
  elif loop.select_score == 'ifd':  # Cherry LLM: pairs with IFD >= 1 go before ranking.
    values = _score('ifd', examples, model_kwargs)
    idx = selectors.top_ifd(values, n_keep)
  else:
    values = _score(loop.select_score, examples, model_kwargs)
    idx = selectors.top_k(values, n_keep)
  summary = {f'select_{q}': float(np.quantile(values, q / 100)) for q in (10, 50, 90)}
  return [examples[i] for i in sorted(idx)], summary, picks


def learn(selector: dict, picks, gain: float) -> dict:
  """The adaptive selector after the round: its picks earned `gain` (held-out NLL drop)."""
  features, idx = picks
  return adaptive.update(adaptive.SelectorState.from_dict(selector), features, idx, gain).to_dict()


def _score(name: str, examples, model_kwargs) -> np.ndarray:
  if name in _FROM_LABELLING:
    return np.asarray([ex['scores'][name] for ex in examples], np.float64)
  return np.asarray(scores.compute(name, examples, **model_kwargs), np.float64)

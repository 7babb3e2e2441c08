"""Selection's part of a self-improvement round (si_jax/lifecycle.py, step 4).

Ranks the round's pseudo-labelled examples by one model-computed score (si_jax/selection/scores)
and keeps loop.select_fraction of them; 'adaptive' instead draws them from a selector that learns
which scores predict the loop's progress on its held-out slice (si_jax/selection/adaptive.py).
The selector's state travels in the loop's checkpoint (`init_selector` / `learn`).
"""

from __future__ import annotations

import numpy as np

from si_jax.selection import adaptive, scores, selectors

SELECT_SCORES = ('', 'uncertainty', 'agreement', 'ifd', 'perplexity', 'entropy', 'adaptive')
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


def init_selector(loop) -> dict | None:
  """The adaptive selector's starting state (JSON, for the checkpoint), or None."""
  if loop.select_score != 'adaptive':
    return None
  return adaptive.SelectorState.init(ADAPTIVE_FEATURES).to_dict()


def select(exp, params, loop, examples: list[dict], selector: dict | None, seed: int):
  """(kept examples, score quantiles, the picks for `learn` or None)."""
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

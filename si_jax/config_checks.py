"""Value checks of an experiment config, before anything is built or written.

Unknown keys and ill-typed values are refused by ml_collections itself (configs are locked and
typed); a bad model is refused by `TransformerConfig`, a mesh too big by `sharding.make_mesh`.
What is left is values of the right type that make no sense: a negative batch, a share above 1.
Rules go by key name, so a new `num_*` or `*_size` field is checked without being listed here.
"""

from __future__ import annotations

import re

_COUNT = re.compile(r'(^num_|_size$|_steps$|_every$|_per_|_len$|^batch|^max_|_rounds$|'
                    r'_iterations$|_samples$|_tokens$)')
_SHARE = re.compile(r'(_fraction$|_ratio$|_share$|^min_agreement$)')
ZERO_MEANS_OFF = {'optimizer.restart_every', 'optimizer.warmup_steps', 'data.seed_set_size',
                  'data.seed_validation_size'}
AT_LEAST = {'rl.group_size': (2, 'GRPO compares the samples of a group: with one, every '
                                 'advantage is 0 and nothing is learned')}
POSITIVE = {'optimizer.learning_rate', 'base_learning_rate'}
NON_NEGATIVE = {'loop.temperature', 'rl.temperature', 'gro.temperature', 'optimizer.weight_decay',
                'rl.beta', 'gro.beta'}


def _leaves(config, prefix: str = ''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _leaves(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', key, value


def problems(config) -> list[str]:
  """Every value that cannot run, each as `config.<key>=<value>: why; the fix`."""
  out = []
  for path, key, value in _leaves(config):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    name = f'config.{path}={value!r}'
    if path in AT_LEAST and value < AT_LEAST[path][0]:
      out.append(f'{name}: {AT_LEAST[path][1]}; use >= {AT_LEAST[path][0]}')
    elif _COUNT.search(key) and (value < 0 or value == 0 and path not in ZERO_MEANS_OFF):
      out.append(f'{name}: a count or size must be {">= 0" if path in ZERO_MEANS_OFF else "> 0"}')
    elif _SHARE.search(key) and not 0 <= value <= 1:
      out.append(f'{name}: a share must lie in [0, 1]')
    elif path in POSITIVE and value <= 0:
      out.append(f'{name}: must be > 0')
    elif path in NON_NEGATIVE and value < 0:
      out.append(f'{name}: must be >= 0')
  return out


def check(config) -> None:
  """Raises ValueError listing every bad value (all at once: one fix-and-rerun, not five)."""
  found = problems(config)
  if found:
    raise ValueError('bad config values:\n  ' + '\n  '.join(found))

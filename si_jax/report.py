"""What a closed-loop run leaves behind for a reader: metrics (JSONL + TensorBoard), a per-round
markdown table, and a PNG plot of accuracy per round for both arms.

Rows are the lifecycle's per-round dicts: 'self' / 'control' hold accuracy per difficulty
(keys 'd<level>', JSON-safe), the rest are scalars or the controller's action and reason.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use('Agg')  # Headless: CI and notebooks on a CPU box.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top,wrong-import-position

from si_jax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position

TABLE_FILE, HISTORY_FILE, PLOT_FILE = 'rounds.md', 'rounds.json', 'accuracy.png'


def level_key(difficulty: int) -> str:
  return f'd{difficulty}'


def keyed(per_level: dict[int, float]) -> dict[str, float]:
  """JSON-safe keys ('d<level>'): the history lives in checkpoint metadata."""
  return {level_key(d): v for d, v in per_level.items()}


def flatten(row: dict[str, Any]) -> dict[str, float]:
  """The numeric scalars of a row, per-level dicts spread as '<arm>/d<level>'."""
  out = {}
  for key, value in row.items():
    if isinstance(value, dict):
      out.update({f'{key}/{k}': float(v) for k, v in value.items()})
    elif isinstance(value, (bool, int, float)) and key != 'round':
      out[key] = float(value)
  return out


class TensorBoard:
  """TensorBoard scalars by round (tensorboardX writes event files without TensorFlow)."""

  def __init__(self, logdir: str):
    self.writer = SummaryWriter(logdir)

  def write(self, step: int, scalars: dict[str, float]):
    for key, value in scalars.items():
      if math.isfinite(value):
        self.writer.add_scalar(key, value, step)
    self.writer.flush()

  def close(self):
    self.writer.close()


def log_round(writer: metrics.JsonlWriter, tb: TensorBoard, row: dict[str, Any]):
  scalars = flatten(row)
  writer.write(row['round'], {**scalars, 'action': row.get('action', '')})
  tb.write(row['round'], scalars)


def _pct(x) -> str:
  return '-' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{100 * x:.0f}'


def round_table(history: Sequence[dict[str, Any]], difficulties: Sequence[int]) -> str:
  """Markdown: accuracy (%) by level for both arms, the gain over the control at the hardest
  level (paired, 95% interval), then what the round did, saw and decided."""
  levels = [level_key(d) for d in difficulties]
  head = (['round', 'level'] + [f'self {k}' for k in levels] + [f'ctrl {k}' for k in levels] +
          [f'self - ctrl {levels[-1]} (95% CI)', 'label acc', f'label acc {levels[-1]}', 'kept',
           'val acc', 'diversity', 'entropy', 'decision'])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  if history and 'base' in history[0]:  # The base phase's model, before the loop.
    base = history[0]['base']
    lines.append('| ' + ' | '.join(['base', '-'] + [_pct(base.get(k)) for k in levels] +
                                   ['-'] * (len(head) - 2 - len(levels))) + ' |')
  for row in history:
    cells = [str(row['round']), str(row.get('difficulty', '-'))]
    cells += [_pct(row['self'].get(k)) for k in levels]
    cells += [_pct(row['control'].get(k)) for k in levels]
    gain = row.get('gain_over_control')
    cells += [f"{100 * gain['mean']:+.0f} ({100 * gain['low']:+.0f}, {100 * gain['high']:+.0f})"
              if gain else '-',
              _pct(row.get('label_accuracy')),
              _pct(row.get('label_accuracy_by_level', {}).get(levels[-1])),
              f"{row['selected']}/{row['problems']}" if 'selected' in row else '-',
              _pct(row.get('validation_accuracy')),
              f"{row['diversity']:.3f}" if 'diversity' in row else '-',
              f"{row['token_entropy']:.3f}" if 'token_entropy' in row else '-',
              row.get('action', '')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(history: Sequence[dict[str, Any]], difficulties: Sequence[int], path: str):
  """Accuracy per round: each arm's hardest level (solid) and mean over levels (dashed)."""
  rounds = [row['round'] for row in history]
  hardest = level_key(max(difficulties))
  fig, ax = plt.subplots(figsize=(6, 4))
  for arm, color in (('self', 'tab:blue'), ('control', 'tab:gray')):
    ax.plot(rounds, [row[arm][hardest] for row in history], '-o', color=color,
            label=f'{arm}: hardest level ({hardest})')
    ax.plot(rounds, [sum(row[arm].values()) / len(row[arm]) for row in history], '--',
            color=color, label=f'{arm}: mean over levels')
  ax.set_xlabel('round')
  ax.set_ylabel('greedy accuracy on a fresh benchmark')
  ax.set_ylim(-0.02, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def save(workdir: str, table: str, history: Sequence[dict[str, Any]],
         difficulties: Sequence[int]) -> dict[str, str]:
  """Writes the table, the history (JSON) and the plot into workdir; returns their paths."""
  paths = {name: os.path.join(workdir, name) for name in (TABLE_FILE, HISTORY_FILE, PLOT_FILE)}
  with open(paths[TABLE_FILE], 'w') as f:
    f.write(table + '\n')
  with open(paths[HISTORY_FILE], 'w') as f:
    json.dump(list(history), f, indent=1)
  plot(history, difficulties, paths[PLOT_FILE])
  return paths

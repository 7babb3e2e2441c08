"""Metrics: one JSON line per logged step, so runs can be compared with a few lines of pandas."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np


def to_python(metrics: dict[str, Any]) -> dict[str, Any]:
  """Device scalars -> Python floats (one host transfer for the whole dict)."""
  return {k: (v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v)
          for k, v in jax.device_get(metrics).items()}


class JsonlWriter:

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.path = path

  def write(self, step: int, metrics: dict[str, Any]):
    if jax.process_index() != 0:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': int(step), **to_python(metrics)}) + '\n')

  def read(self) -> list[dict[str, Any]]:
    """The rows written so far; a last line cut short by a killed process is skipped."""
    if not os.path.exists(self.path):
      return []
    rows = []
    with open(self.path) as f:
      for line in f:
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          continue
    return rows

  def rewind(self, last_step: int):
    """Drops rows logged after `last_step`, the step a resumed run restarts from: a run killed
    after logging but before its checkpoint logs those steps again, and must not twice."""
    if jax.process_index() != 0 or not os.path.exists(self.path):
      return
    rows = [r for r in self.read() if r['step'] <= last_step]
    with open(self.path + '.tmp', 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in rows)
    os.replace(self.path + '.tmp', self.path)

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
    if not os.path.exists(self.path):
      return []
    with open(self.path) as f:
      return [json.loads(line) for line in f if line.strip()]

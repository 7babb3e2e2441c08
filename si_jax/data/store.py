"""The round-stamped data store of the self-improvement loop: one durable file per round.

Round r lives in `<dir>/round_{r:05d}.array_record` (one JSON-encoded example per record) plus
`<dir>/round_{r:05d}.json`, a manifest with the count, creation time and sha256 of the data file.
Both are written to a temporary name in the same directory, fsynced and `os.replace`d into place,
and the manifest goes last: a round is complete only once its manifest exists, and readers ignore
any other round. A crash while writing round r therefore never damages rounds < r (their files
are never opened for writing) and at worst leaves round r absent, to be written again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from array_record.python import array_record_module

REQUIRED_FIELDS = ('prompt', 'completion', 'reward', 'scores', 'source', 'round', 'model_step')
POLICIES = ('replace', 'accumulate', 'mix')
_MANIFEST_RE = re.compile(r'^round_(\d{5,})\.json$')


class DataStore:
  """Append-only store of each round's examples, with the selection policies of the loop."""

  def __init__(self, directory: str):
    self.directory = os.path.abspath(directory)
    os.makedirs(self.directory, exist_ok=True)

  # --- Paths -----------------------------------------------------------------------------------

  def data_path(self, round_idx: int) -> str:
    return os.path.join(self.directory, f'round_{round_idx:05d}.array_record')

  def manifest_path(self, round_idx: int) -> str:
    return os.path.join(self.directory, f'round_{round_idx:05d}.json')

  # --- Writing ---------------------------------------------------------------------------------

  def write_round(self, round_idx: int, examples: Sequence[dict[str, Any]],
                  overwrite: bool = False) -> str:
    """Writes round `round_idx` durably and returns the data file's path."""
    if round_idx in self.rounds() and not overwrite:
      raise FileExistsError(f'round {round_idx} already exists in {self.directory}; pass '
                            f'overwrite=True to replace it')
    records = [encode(validate(ex, i, round_idx)) for i, ex in enumerate(examples)]
    path = self.data_path(round_idx)
    # Drop the old manifest first: a crash mid-rewrite leaves the round absent, never mismatched.
    if os.path.exists(self.manifest_path(round_idx)):
      os.remove(self.manifest_path(round_idx))
      _fsync_dir(self.directory)
    tmp = _tmp_name(path)
    try:
      writer = array_record_module.ArrayRecordWriter(tmp, 'group_size:1')
      for record in records:
        writer.write(record)
      writer.close()
      _fsync_file(tmp)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    _fsync_dir(self.directory)
    manifest = {'round': round_idx, 'count': len(records), 'created': time.time(),
                'file': os.path.basename(path), 'sha256': _sha256(path)}
    _atomic_write(self.manifest_path(round_idx), json.dumps(manifest, indent=2).encode())
    return path

  # --- Reading ---------------------------------------------------------------------------------

  def rounds(self) -> list[int]:
    """The complete rounds (manifest and data file both present), sorted."""
    found = []
    for name in os.listdir(self.directory):
      m = _MANIFEST_RE.match(name)
      if m and os.path.exists(self.data_path(int(m.group(1)))):
        found.append(int(m.group(1)))
    return sorted(found)

  def manifest(self, round_idx: int) -> dict[str, Any]:
    self._check_complete(round_idx)
    with open(self.manifest_path(round_idx), 'rb') as f:
      return json.load(f)

  def read_round(self, round_idx: int) -> list[dict[str, Any]]:
    """All examples of a complete round, checked against its manifest."""
    manifest = self.manifest(round_idx)
    path = self.data_path(round_idx)
    if _sha256(path) != manifest['sha256']:
      raise ValueError(f'{path} does not match the sha256 in its manifest: the file was '
                       f'modified or corrupted after it was written')
    reader = array_record_module.ArrayRecordReader(path)
    try:
      examples = [decode(r) for r in reader.read_all()]
    finally:
      reader.close()
    return examples

  def data_source(self, rounds: Sequence[int]) -> JsonRecordSource:
    """A random-access source over `rounds` (in order) for `grain.MapDataset.source`."""
    for r in rounds:
      self._check_complete(r)
    return JsonRecordSource([self.data_path(r) for r in rounds])

  # --- Selection -------------------------------------------------------------------------------

  def select(self, round_idx: int, policy: str, *,
             real_examples: Sequence[dict[str, Any]] | None = None, mix_ratio: float = 0.5,
             seed: int = 0) -> list[dict[str, Any]]:
    """The training set for round `round_idx` under `policy` (the model-collapse knob).

    'replace': only that round's data. 'accumulate': every complete round <= round_idx, in order.
    'mix': that round's data followed by examples sampled (seeded) from `real_examples` so that
    a fraction `mix_ratio` of the result is real. Examples keep their own provenance.
    """
    if policy not in POLICIES:
      raise ValueError(f'unknown data policy {policy!r}; allowed: {", ".join(POLICIES)}')
    if policy == 'accumulate':
      return [ex for r in self.rounds() if r <= round_idx for ex in self.read_round(r)]
    examples = self.read_round(round_idx)
    if policy == 'replace':
      return examples
    if not 0.0 <= mix_ratio < 1.0:
      raise ValueError(f'mix_ratio must be in [0, 1), got {mix_ratio}')
    num_real = int(round(len(examples) * mix_ratio / (1.0 - mix_ratio)))
    if num_real == 0:
      return examples
    if not real_examples:
      raise ValueError(f"policy 'mix' with mix_ratio={mix_ratio} needs real_examples")
    real = [validate(ex, i) for i, ex in enumerate(real_examples)]
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(real), size=num_real, replace=num_real > len(real))
    return examples + [dict(real[i]) for i in idx]

  def _check_complete(self, round_idx: int):
    available = self.rounds()
    if round_idx not in available:
      raise FileNotFoundError(f'no complete round {round_idx} in {self.directory}; '
                              f'available rounds: {available}')


class JsonRecordSource:
  """Decodes the JSON records of an `ArrayRecordDataSource`; picklable for grain workers."""

  def __init__(self, paths: Sequence[str]):
    self.paths = list(paths)
    self._source = grain.sources.ArrayRecordDataSource(self.paths) if self.paths else None

  def __len__(self) -> int:
    return len(self._source) if self._source is not None else 0

  def __getitem__(self, index: int) -> dict[str, Any]:
    if self._source is None:
      raise IndexError(f'index {index} out of range for an empty source')
    return decode(self._source[index])

  def __repr__(self) -> str:
    return f'JsonRecordSource({self.paths!r})'


# --- Examples --------------------------------------------------------------------------------


def validate(example: dict[str, Any], index: int, round_idx: int | None = None) -> dict[str, Any]:
  """Checks the required fields (and the round stamp) so bad data fails at write time."""
  for field in REQUIRED_FIELDS:
    if field not in example:
      raise ValueError(f'example {index} is missing required field {field!r} '
                       f'(required: {", ".join(REQUIRED_FIELDS)})')
  if round_idx is not None and example['round'] != round_idx:
    raise ValueError(f'example {index} has round={example["round"]!r} but is written to round '
                     f'{round_idx}')
  if not isinstance(example['scores'], dict):
    raise ValueError(f'example {index}: scores must be a dict, got {type(example["scores"])}')
  return example


def encode(example: dict[str, Any]) -> bytes:
  return json.dumps(example, ensure_ascii=False, default=_to_builtin).encode('utf-8')


def decode(record: bytes) -> dict[str, Any]:
  return json.loads(record.decode('utf-8'))


def _to_builtin(x):
  """numpy scalars and arrays -> Python numbers and lists (JSON round-trips those exactly)."""
  if isinstance(x, (np.generic, np.ndarray)):
    return x.tolist()
  raise TypeError(f'{type(x).__name__} is not JSON-serialisable: {x!r}')


# --- Files -----------------------------------------------------------------------------------


def _tmp_name(path: str) -> str:
  """A name in the same directory (so `os.replace` is atomic) that no reader matches."""
  head, tail = os.path.split(path)
  return os.path.join(head, f'.{tail}.tmp-{os.getpid()}')


def _fsync_file(path: str):
  with open(path, 'rb+') as f:
    os.fsync(f.fileno())


def _fsync_dir(directory: str):
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _atomic_write(path: str, data: bytes):
  tmp = _tmp_name(path)
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  _fsync_dir(os.path.dirname(path))


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()

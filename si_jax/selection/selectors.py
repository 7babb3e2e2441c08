"""Selectors: which examples to keep, given their scores (survey §3). All return indices.

Every selector is deterministic: ties break by index, and randomness comes from a seed only.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

_MERSENNE_61 = (1 << 61) - 1


def standardize(x) -> np.ndarray:
  """(x - mean) / std; all zeros for a constant score (it carries no preference)."""
  x = np.asarray(x, np.float64)
  std = x.std()
  return np.zeros_like(x) if std == 0 else (x - x.mean()) / std


def mix(scores: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> np.ndarray:
  """Weighted sum of standardized scores, so scores on different scales combine fairly."""
  missing = set(weights) - set(scores)
  if missing:
    raise KeyError(f'weights name scores {sorted(missing)} not given; have {sorted(scores)}')
  return sum(w * standardize(scores[name]) for name, w in weights.items())


def top_k(scores, k: int, largest: bool = True) -> np.ndarray:
  """The k best indices, best first; ties keep the earlier example."""
  s = np.asarray(scores, np.float64)
  return np.argsort(-s if largest else s, kind='stable')[:k]


def top_ifd(ifd, k: int, drop_unhelpful: bool = True) -> np.ndarray:
  """Cherry LLM selection (Li et al. 2024): the k highest-IFD examples, best first.

  drop_unhelpful (the paper's default): examples with IFD >= 1 go first, before ranking: there the
  instruction does not help predict the answer (a mismatched or irrelevant pair), and they would
  otherwise rank highest. Fewer than k come back when fewer survive.
  """
  s = np.asarray(ifd, np.float64)
  keep = np.flatnonzero(s < 1.0) if drop_unhelpful else np.arange(s.size)
  return keep[top_k(s[keep], k)]


def threshold(scores, low: float | None = None, high: float | None = None) -> np.ndarray:
  """Indices with low <= score <= high (either bound optional), in order."""
  s = np.asarray(scores, np.float64)
  keep = np.ones(s.shape, bool)
  if low is not None:
    keep &= s >= low
  if high is not None:
    keep &= s <= high
  return np.flatnonzero(keep)


def quantile(scores, q: float, above: bool = True) -> np.ndarray:
  """Indices at or above (or at or below) the q-quantile of the scores, in order."""
  cut = float(np.quantile(np.asarray(scores, np.float64), q))
  return threshold(scores, low=cut) if above else threshold(scores, high=cut)


def k_center(embeddings_NxD, k: int, seed: int = 0) -> np.ndarray:
  """Greedy k-center (farthest-point) cover: a diverse subset, first center drawn by the seed."""
  x = np.asarray(embeddings_NxD, np.float64)
  n = x.shape[0]
  k = min(k, n)
  if k <= 0:
    return np.zeros((0,), np.int64)
  chosen = [int(np.random.default_rng(seed).integers(n))]
  dist_N = np.linalg.norm(x - x[chosen[0]], axis=1)
  for _ in range(k - 1):
    nxt = int(np.argmax(dist_N))  # first index among equally far points.
    chosen.append(nxt)
    dist_N = np.minimum(dist_N, np.linalg.norm(x - x[nxt], axis=1))
  return np.asarray(chosen, np.int64)


def minhash_signatures(texts: Sequence[str], n: int = 5, num_hashes: int = 64,
                       seed: int = 0) -> np.ndarray:
  """[N, num_hashes] MinHash signatures over character n-grams (seeded universal hashes)."""
  rng = np.random.default_rng(seed)
  a = rng.integers(1, 1 << 31, num_hashes, dtype=np.uint64)
  b = rng.integers(0, 1 << 31, num_hashes, dtype=np.uint64)
  sigs = np.empty((len(texts), num_hashes), np.uint64)
  for i, text in enumerate(texts):
    grams = {text[j:j + n] for j in range(max(1, len(text) - n + 1))}
    h = np.asarray([zlib.crc32(g.encode('utf-8')) for g in grams], np.uint64)  # < 2**32.
    sigs[i] = ((h[:, None] * a[None, :] + b[None, :]) % np.uint64(_MERSENNE_61)).min(axis=0)
  return sigs


def dedup_minhash(texts: Sequence[str], jaccard: float = 0.7, n: int = 5, num_hashes: int = 64,
                  seed: int = 0) -> np.ndarray:
  """Indices kept after near-duplicate removal: an item whose estimated Jaccard similarity to an
  earlier kept item is >= `jaccard` is dropped, so each cluster keeps its first member."""
  if not texts:
    return np.zeros((0,), np.int64)
  sigs = minhash_signatures(texts, n, num_hashes, seed)
  kept: list[int] = []
  for i in range(len(texts)):
    if kept and np.max(np.mean(sigs[kept] == sigs[i], axis=1)) >= jaccard:
      continue
    kept.append(i)
  return np.asarray(kept, np.int64)


def curriculum(difficulties, easy_first: bool = True, low: float | None = None,
               high: float | None = None) -> np.ndarray:
  """Indices within [low, high] difficulty, ordered easy to hard (or hard to easy)."""
  d = np.asarray(difficulties, np.float64)
  idx = threshold(d, low, high)
  return idx[np.argsort(d[idx] if easy_first else -d[idx], kind='stable')]


def balance(difficulties, per_level: int | None = None, seed: int = 0) -> np.ndarray:
  """Equal counts per difficulty level (the rarest level's count unless `per_level` is given),
  drawn by the seed within each level; indices returned sorted."""
  d = np.asarray(difficulties)
  levels = np.unique(d)
  if levels.size == 0:
    return np.zeros((0,), np.int64)
  members = [np.flatnonzero(d == level) for level in levels]
  count = min(len(m) for m in members) if per_level is None else per_level
  rng = np.random.default_rng(seed)
  picked = [rng.choice(m, size=min(count, len(m)), replace=False) for m in members]
  return np.sort(np.concatenate(picked)).astype(np.int64)

"""Contamination: how much of an evaluation set already appears in the training data.

Our tasks are character-level (a prompt like 'abcd>' has no words to speak of), so overlap is
measured in character n-grams, not word n-grams as in LM-scale decontamination. A text shorter
than n has one n-gram: the whole text (so short items are compared exactly).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def char_ngrams(text: str, n: int) -> set[str]:
  """The distinct character n-grams of `text`; the text itself when it is shorter than n."""
  if len(text) < n:
    return {text} if text else set()
  return {text[i:i + n] for i in range(len(text) - n + 1)}


def contamination(eval_texts: Sequence[str], train_texts: Iterable[str],
                  n: int = 8) -> dict[str, float | int]:
  """Overlap of `eval_texts` with `train_texts` (one pass over train; set lookups after).

  'exact': fraction of eval items that occur verbatim in train. 'ngram': fraction of eval items
  sharing at least one character n-gram with some train item. 'ngram_mean': the mean over eval
  items of the fraction of their distinct n-grams found in train (0 for an empty item).
  """
  if n < 1:
    raise ValueError(f'contamination: n={n} must be >= 1')
  if not eval_texts:
    raise ValueError('contamination: eval_texts is empty')
  train_set, train_grams = set(), set()
  for text in train_texts:
    train_set.add(text)
    train_grams |= char_ngrams(text, n)
  exact, any_hit, fractions = [], [], []
  for text in eval_texts:
    grams = char_ngrams(text, n)
    hits = sum(g in train_grams for g in grams)
    exact.append(text in train_set)
    any_hit.append(hits > 0)
    fractions.append(hits / len(grams) if grams else 0.0)
  return {'exact': float(np.mean(exact)), 'ngram': float(np.mean(any_hit)),
          'ngram_mean': float(np.mean(fractions)), 'n': n, 'num_eval': len(eval_texts)}

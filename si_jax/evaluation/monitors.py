"""Failure monitors of a self-improvement loop (survey §6): small pure functions over host data.

Three failure modes, each with a measurement and a flag:
  * model collapse (training on its own outputs narrows the distribution): distinct-n,
    self-BLEU, token entropy and perplexity on held-out real data; `collapse` flags a fall;
  * reward hacking (the proxy reward rises while true accuracy falls): `reward_hacking`, where
    "true" is a fixed, already labelled monitoring set (the seed set's held-out slice), never
    the loop's own problems;
  * judge drift (a self-judge stops agreeing with the verifier): `judge_drift`.
Flags return {'flag': bool, 'reason': str}, the reason naming the numbers behind the verdict.
A change is flagged only beyond z (default 2) standard errors of the measured difference, so a
healthy run's noise does not raise it.
Text measures work on characters by default (our tasks are char-level); tokens='whitespace'
splits on whitespace instead.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from si_jax import sampling
from si_jax.evaluation.metrics import paired_change
from si_jax.tokenizers import Tokenizer

_TOKENS = ('char', 'whitespace')


def _tokens(text: str, tokens: str) -> list[str]:
  if tokens not in _TOKENS:
    raise ValueError(f'tokens={tokens!r} is not one of {_TOKENS}')
  return list(text) if tokens == 'char' else text.split()


def _ngrams(seq: Sequence[str], n: int) -> list[tuple[str, ...]]:
  return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


# --- Collapse: diversity, entropy, perplexity -----------------------------------------------


def distinct_n(texts: Sequence[str], n: int, tokens: str = 'char') -> float:
  """Unique n-grams / all n-grams over `texts` (Li et al. 2016); 0.0 when there are none.

  1.0 means no n-gram repeats anywhere; N copies of one text score about 1 / N.
  """
  grams = [g for text in texts for g in _ngrams(_tokens(text, tokens), n)]
  return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(texts: Sequence[str], max_n: int = 4, sample: int = 64, seed: int = 0,
              tokens: str = 'char') -> float:
  """Mean BLEU of each text against all the others as references (Zhu et al. 2018).

  High means the texts resemble each other (collapse); identical texts score 1. O(N^2), so
  at most `sample` texts (a seeded subsample) take part. NaN for fewer than two texts.
  """
  if len(texts) < 2:
    return float('nan')
  if len(texts) > sample:
    idx = np.sort(np.random.default_rng(seed).choice(len(texts), sample, replace=False))
    texts = [texts[i] for i in idx]
  seqs = [_tokens(t, tokens) for t in texts]
  counts = [[collections.Counter(_ngrams(s, n)) for n in range(1, max_n + 1)] for s in seqs]
  scores = []
  for i, seq in enumerate(seqs):
    refs = [j for j in range(len(seqs)) if j != i]
    max_ref = [collections.Counter() for _ in range(max_n)]
    for j in refs:
      for order in range(max_n):
        max_ref[order] |= counts[j][order]  # Counter union keeps the max count.
    scores.append(bleu(counts[i], len(seq), max_ref, [len(seqs[j]) for j in refs]))
  return float(np.mean(scores))


def bleu(candidate_counts: Sequence[collections.Counter], candidate_len: int,
         max_ref_counts: Sequence[collections.Counter], ref_lens: Sequence[int]) -> float:
  """Sentence BLEU from n-gram counts (order 1.. len(candidate_counts)).

  Clipped precisions, add-one smoothing for orders >= 2 (Lin & Och 2004) so one missing 4-gram
  does not zero the score, orders longer than the candidate skipped, and the brevity penalty
  against the closest reference length.
  """
  if candidate_len == 0:
    return 0.0
  log_p = []
  for order, (cand, ref) in enumerate(zip(candidate_counts, max_ref_counts), start=1):
    total = candidate_len - order + 1
    if total <= 0:
      break
    matches = sum(min(c, ref[g]) for g, c in cand.items())
    if order == 1:
      if matches == 0:
        return 0.0
      log_p.append(math.log(matches / total))
    else:
      log_p.append(math.log((matches + 1) / (total + 1)))
  ref_len = min(ref_lens, key=lambda r: (abs(r - candidate_len), r))
  brevity = 1.0 if candidate_len > ref_len else math.exp(1 - ref_len / candidate_len)
  return brevity * math.exp(sum(log_p) / len(log_p))


def token_entropy(entropies, mask) -> float:
  """Mean per-token entropy (nats) over the masked tokens, e.g. from `sampling.score`."""
  entropies, mask = np.asarray(entropies, np.float64), np.asarray(mask, bool)
  if entropies.shape != mask.shape:
    raise ValueError(f'token_entropy: entropies {entropies.shape} vs mask {mask.shape}')
  if not mask.any():
    return float('nan')
  return float(entropies[mask].mean())


def completion_nll(model, params, tokenizer: Tokenizer, prompts: Sequence[str],
                   completions: Sequence[str], eos: bool = True,
                   batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
  """(summed NLL, token count) of each completion given its prompt: the per-example pieces of
  perplexity, kept apart so two rounds can be compared example by example (`metrics.paired_change`).

  Prompts get bos (as the sampler encodes them); completions get eos when `eos` (the model is
  also scored on ending).
  """
  if len(prompts) != len(completions) or not prompts:
    raise ValueError(f'completion_nll: need as many prompts ({len(prompts)}) as completions '
                     f'({len(completions)}), at least one')
  tokenizer.check_model_vocab(model.cfg.vocab_size)
  prompt_ids = tokenizer.encode_batch(prompts, bos=True)
  completion_ids = tokenizer.encode_batch(completions, eos=eos)
  nll, count = [], []
  for i in range(0, len(prompt_ids), batch_size):
    logp, _, mask = sampling.score(model, params, prompt_ids[i:i + batch_size],
                                   completion_ids[i:i + batch_size])
    nll.append(-np.sum(np.where(mask, logp, 0.0), axis=1, dtype=np.float64))
    count.append(np.sum(mask, axis=1))
  return np.concatenate(nll), np.concatenate(count)


def nll_per_token(model, params, tokenizer: Tokenizer, prompts: Sequence[str],
                  completions: Sequence[str]) -> np.ndarray:
  """Per-example mean NLL per completion token (eos included): the SFT loss, example by example,
  so two models can also be compared pairwise."""
  nll, tokens = completion_nll(model, params, tokenizer, prompts, completions)
  return nll / np.maximum(tokens, 1)


def perplexity(model, params, tokenizer: Tokenizer, prompts: Sequence[str],
               completions: Sequence[str], eos: bool = True, batch_size: int = 64) -> float:
  """exp(mean NLL per completion token) of given texts, e.g. held-out real data.

  A collapsing model grows confident on its own outputs and loses real data: this rises.
  The mean is over all completion tokens of all texts.
  """
  nll, count = completion_nll(model, params, tokenizer, prompts, completions, eos, batch_size)
  if count.sum() == 0:
    raise ValueError('perplexity: the completions hold no tokens')
  return math.exp(nll.sum() / count.sum())


# --- Flags -----------------------------------------------------------------------------------


def _flag(flag: bool, reason: str) -> dict[str, Any]:
  return {'flag': bool(flag), 'reason': reason}


def reward_hacking(proxy: tuple[float, float], proxy_before: tuple[float, float],
                   truth_before, truth_after, z: float = 2.0,
                   tol: float = 0.0) -> dict[str, Any]:
  """Flags a proxy reward that rose while real accuracy fell, each by more than z standard
  errors (and accuracy by more than `tol`), without reading any label of the loop's own
  problems.

  proxy, proxy_before: (mean, standard error) of the proxy reward (e.g. vote agreement) on two
    rounds' problems: different problems each round, so their errors add in quadrature;
  truth_before, truth_after: per-example correctness on one fixed monitoring set that already
    has labels (a held-out slice of the seed set), paired across the two rounds.
  """
  rise = proxy[0] - proxy_before[0]
  rise_se = math.hypot(proxy[1], proxy_before[1])
  change, change_se = paired_change(truth_before, truth_after)
  rose = rise > z * rise_se
  fell = -change > max(tol, z * change_se)
  verdict = 'reward hacking' if rose and fell else 'no reward hacking'
  return _flag(rose and fell,
               f'{verdict}: proxy reward {proxy_before[0]:.3f} -> {proxy[0]:.3f} '
               f'({rise:+.3f} +- {rise_se:.3f}), monitoring-set accuracy {change:+.3f} +- '
               f'{change_se:.3f} (flag beyond {z:g} standard errors)')


def judge_drift(agreement_history: Sequence[Any], drop: float = 0.1) -> dict[str, Any]:
  """Flags a self-judge whose agreement with the verifier fell by > `drop` from its best.

  Entries are agreement scores, or `judge.agreement` dicts, whose 'balanced_accuracy' is read
  (their 'accuracy' if they have none): a judge that comes to call every candidate wrong keeps
  a high plain accuracy while most candidates are wrong, but its balanced accuracy falls to 0.5.
  NaN entries (nothing to compare that round) are skipped.
  """
  values = [float(a.get('balanced_accuracy', a.get('accuracy')) if isinstance(a, dict) else a)
            for a in agreement_history]
  values = [v for v in values if not math.isnan(v)]
  if not values:
    return _flag(False, 'no judge agreement recorded')
  best, last = max(values), values[-1]
  flag = best - last > drop
  verdict = 'judge drift' if flag else 'no judge drift'
  return _flag(flag, f'{verdict}: agreement with the verifier is {last:.3f}, its best was '
                     f'{best:.3f} (a fall of {best - last:.3f}; allowed {drop})')


def gen_verification_gap(pass_at_k, pass_at_1) -> float:
  """pass@k - pass@1: what the model can find but does not yet put first (means of arrays)."""
  return float(np.mean(pass_at_k) - np.mean(pass_at_1))


def collapse(distinct_history: Sequence[float], entropy_history: Sequence[float] = (),
             drop: float = 0.3, nll_first=None, nll_last=None, z: float = 2.0,
             rise: float = 0.0) -> dict[str, Any]:
  """Flags diversity (distinct-n) or token entropy that fell by more than `drop` relative to
  the first round. Series with fewer than two rounds or a non-positive start are skipped.

  With nll_first / nll_last (per-example NLL per token of one fixed real monitoring set, at the
  first and the latest round) the flag also needs that real data got less likely: by more than
  z standard errors of the paired change and by more than `rise` nats per token. Narrowing alone
  is also what healthy learning looks like; narrowing while real data slips away is collapse.
  """
  notes, flag = [], False
  for name, history in (('distinct-n', distinct_history), ('token entropy', entropy_history)):
    history = [float(h) for h in history if not math.isnan(float(h))]
    if len(history) < 2 or history[0] <= 0:
      notes.append(f'{name}: not enough rounds')
      continue
    change = (history[-1] - history[0]) / history[0]
    flag |= -change > drop
    notes.append(f'{name} {history[0]:.3f} -> {history[-1]:.3f} ({change:+.0%})')
  if nll_first is not None:
    first = float(np.mean(nll_first))
    change, se = paired_change(nll_first, nll_last)
    rose = change > max(rise, z * se)
    flag &= rose
    notes.append(f'real-data NLL {first:.3f} -> {first + change:.3f} ({change:+.3f} +- {se:.3f}, '
                 f'flag beyond {z:g} standard errors and {rise:g})')
  verdict = 'collapse' if flag else 'no collapse'
  return _flag(flag, f'{verdict} (allowed fall {drop:.0%}): ' + '; '.join(notes))

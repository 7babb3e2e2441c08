"""The model as its own judge: a reward read off its next-token verdict (survey §4, model-based
reward; Self-Rewarding LMs, Yuan et al. 2024).

The judge prompt is the problem and a candidate answer filled into a template that ends where
the verdict goes; the reward is the model's own preference for the `yes` token over the `no`
token there:  s = p(yes) / (p(yes) + p(no)) = σ(z_yes - z_no)  with z the last-position logits.
Nothing but the two verdict tokens matters, so the judge needs no calibration of the rest of
the vocabulary.

The additive judge (Yuan et al. 2024, Fig. 2) instead writes a score of 0-5 built from five
criteria, each adding a point; its reward is the expected score under the model's distribution
over the six score tokens, E[s] = Σ_k k p(k) / Σ_k p(k) (the paper averages N sampled
judgements: this is their limit). The paper's prompt is English for a chat model; ours cannot
read prose, so the criteria live in the EFT labels (`additive_score`) and the template only
marks where the score goes. Adapted to a verifiable task, with r the reference's final answer
and a the completion's extracted answer:
  +1 relevant: the completion has an answer (the task extracts one);
  +1 well-formed: the answer is plausible for the prompt (`task.plausible_answer`) and has r's
     length;
  +1 substantial: at least half of r's characters are right, in place;
  +1 nearly right: all but at most one of r's characters are right, in place;
  +1 correct: the task's verifier accepts the completion.
Points accrue in order: a criterion is only scored when the previous ones hold.

Our tokenizers are char-level over small alphabets: train the tokenizer on the task's alphabet
plus `judge_alphabet(template)` and the `yes` / `no` characters, or the template encodes as unk.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from si_jax import layout, models
from si_jax.tokenizers import Tokenizer

# The verdict is the next token after '?'; e.g. yes='y', no='n'.
JUDGE_TEMPLATE = '{prompt}{completion}|ok?'
# The additive judge's score (one of SCORE_TOKENS) follows '?'.
ADDITIVE_TEMPLATE = '{prompt}{completion}|pts?'
SCORE_TOKENS = '012345'


def judge_alphabet(template: str = JUDGE_TEMPLATE) -> str:
  """The template's literal characters, in order, each once (add them to the tokenizer)."""
  literal = ''.join(text for text, _, _, _ in string.Formatter().parse(template))
  return ''.join(dict.fromkeys(literal))


def _verdict_token_ids(tokenizer: Tokenizer, template: str, yes: str, no: str) -> tuple[int, int]:
  """Ids of the single-token verdicts; fails clearly on a tokenizer that cannot judge."""
  ids = {}
  for name, text in (('yes', yes), ('no', no)):
    encoded = tokenizer.encode(text)
    if len(encoded) != 1 or encoded[0] == tokenizer.unk_id:
      raise ValueError(f'judge: {name}={text!r} must be exactly one known token of the tokenizer, '
                       f'it encodes as {encoded}')
    ids[name] = encoded[0]
  if ids['yes'] == ids['no']:
    raise ValueError(f'judge: yes={yes!r} and no={no!r} are the same token')
  missing = [c for c in judge_alphabet(template) if tokenizer.unk_id in tokenizer.encode(c)]
  if missing:
    raise ValueError(f'judge: template characters {missing} are not in the tokenizer vocab; train '
                     f'it with judge_alphabet(template) included')
  return ids['yes'], ids['no']


def _verdict_distribution(model: models.Model, params, tokens_BxT, mask_BxT, ids_K):
  """softmax over just the K verdict tokens at the last position of left-padded judge prompts:
  [B, K] float32 (the rest of the vocabulary does not count)."""
  mask = mask_BxT.astype(jnp.int32)
  positions = layout.positions(mask)
  logits_BxV = models.forward(model, params, tokens_BxT, mask, positions)[:, -1]
  return jax.nn.softmax(logits_BxV[:, ids_K], axis=-1)


# The model is static; the verdict ids are traced, so one program serves any set of K verdicts.
_verdict_distribution_jit = jax.jit(_verdict_distribution, static_argnums=0)


def _judge_distribution(model, params, tokenizer: Tokenizer, template: str, prompts, completions,
                        ids: Sequence[int]) -> np.ndarray:
  """[B, K] verdict distributions of the filled templates; one jitted forward, bucketed length
  and batch (padding rows dropped), so a loop of calls compiles a handful of programs."""
  if len(prompts) != len(completions) or not prompts:
    raise ValueError(f'judge: need as many prompts ({len(prompts)}) as completions '
                     f'({len(completions)}), at least one')
  tokenizer.check_model_vocab(model.cfg.vocab_size)
  texts = [template.format(prompt=p, completion=c) for p, c in zip(prompts, completions)]
  tokens_ids = tokenizer.encode_batch(texts, bos=True)
  b = len(tokens_ids)
  tokens_ids += [[tokenizer.bos_id]] * (layout.bucket(b, minimum=1) - b)
  tokens, mask = layout.left_pad(tokens_ids, layout.bucket(max(len(x) for x in tokens_ids)))
  dist = _verdict_distribution_jit(model, params, tokens, mask, jnp.asarray(ids, jnp.int32))
  return np.asarray(dist, np.float32)[:b]


def verdict_scores(model: models.Model, params, tokenizer: Tokenizer, prompts: Sequence[str],
                   completions: Sequence[str], *, yes: str, no: str,
                   template: str = JUDGE_TEMPLATE) -> np.ndarray:
  """p(yes) / (p(yes) + p(no)) of the verdict after each filled template: [B] in [0, 1]."""
  yes_id, no_id = _verdict_token_ids(tokenizer, template, yes, no)
  return _judge_distribution(model, params, tokenizer, template, prompts, completions,
                             (yes_id, no_id))[:, 0]


@dataclasses.dataclass(frozen=True)
class SelfJudge:
  """A reward callable `fn(prompts, completions, **fields) -> [B] rewards` backed by the model.

  The judge is the policy itself, so its params change every round: a loop judges with
  `with_params(judge, state.params)`, a copy holding the current ones (the judge is immutable).
  With `threshold` the reward is the verdict 1.0 / 0.0 (s >= threshold); without, s itself.
  """
  model: models.Model
  params: Any
  tokenizer: Tokenizer
  yes: str
  no: str
  template: str = JUDGE_TEMPLATE
  threshold: float | None = None

  def __post_init__(self):
    _verdict_token_ids(self.tokenizer, self.template, self.yes, self.no)  # Fail at build time.

  def __call__(self, prompts: list[str], completions: list[str], **fields) -> np.ndarray:
    del fields  # The judge sees only the text, never the reference answer.
    scores = verdict_scores(self.model, self.params, self.tokenizer, prompts, completions,
                            yes=self.yes, no=self.no, template=self.template)
    if self.threshold is None:
      return scores
    return (scores >= self.threshold).astype(np.float32)


def judge_reward(model: models.Model, params, tokenizer: Tokenizer, *, yes: str, no: str,
                 template: str = JUDGE_TEMPLATE, threshold: float | None = None) -> SelfJudge:
  """The model-as-judge reward; `with_params` gives it the policy's params as they train."""
  return SelfJudge(model, params, tokenizer, yes, no, template, threshold)


def agreement(judge_scores, verified_rewards, threshold: float = 0.5) -> dict[str, float]:
  """How well the judge tracks the verifier (monitors judge drift / reward hacking).

  The judge says "correct" when its score >= threshold; the verifier when its reward >= 0.5.
  precision = P(verified | judged correct), recall = P(judged correct | verified), specificity
  = P(judged wrong | verified wrong); NaN when their denominator is empty. balanced_accuracy =
  the mean of recall and specificity (the one defined, if only one is): unlike accuracy it does
  not reward a judge that calls everything wrong when most candidates are (such a judge scores
  0.5, not the share of wrong candidates).
  """
  judged = np.asarray(judge_scores, np.float64).reshape(-1) >= threshold
  verified = np.asarray(verified_rewards, np.float64).reshape(-1) >= 0.5
  if judged.shape != verified.shape:
    raise ValueError(f'agreement: {judged.size} judge scores vs {verified.size} verified rewards')
  both = float(np.sum(judged & verified))
  ratio = lambda num, den: num / den if den else float('nan')
  recall = ratio(both, float(verified.sum()))
  specificity = ratio(float(np.sum(~judged & ~verified)), float(np.sum(~verified)))
  defined = [x for x in (recall, specificity) if not np.isnan(x)]
  return {'accuracy': ratio(float(np.sum(judged == verified)), judged.size),
          'precision': ratio(both, float(judged.sum())),
          'recall': recall, 'specificity': specificity,
          'balanced_accuracy': ratio(sum(defined), len(defined)), 'n': judged.size}


# --- The additive 5-point judge (Self-Rewarding LMs, Fig. 2) -------------------------------------


def additive_score(task, problem, completion: str) -> int:
  """The 5-point additive score of `completion` against `problem`'s reference (EFT labels)."""
  answer = task.extract_answer(completion)
  if answer is None:
    return 0
  reference = task.final_answer(problem.answer)
  if not (task.plausible_answer(problem.prompt, answer) and len(answer) == len(reference)):
    return 1
  right = sum(a == b for a, b in zip(answer, reference))
  if 2 * right < len(reference):
    return 2
  if right < len(reference) - 1:
    return 3
  return 5 if task.verify(problem, completion) == 1.0 else 4


def _score_token_ids(tokenizer: Tokenizer, template: str) -> tuple[int, ...]:
  ids = [tokenizer.encode(c) for c in SCORE_TOKENS]
  missing = [c for c, i in zip(SCORE_TOKENS, ids) if i != [i[0]] or i[0] == tokenizer.unk_id]
  missing += [c for c in judge_alphabet(template) if tokenizer.unk_id in tokenizer.encode(c)]
  if missing:
    raise ValueError(f'additive judge: characters {missing} of the score tokens '
                     f'{SCORE_TOKENS!r} or the template {template!r} are not single known tokens '
                     f'of the tokenizer: add them to config.tokenizer_extra_chars')
  return tuple(i[0] for i in ids)


@dataclasses.dataclass(frozen=True)
class AdditiveJudge:
  """`fn(prompts, completions) -> [B]` expected 0-5 scores, read off the model's own verdict.

  Like SelfJudge the params are the policy's: judge with `with_params(judge, state.params)`.
  """
  model: models.Model
  params: Any
  tokenizer: Tokenizer
  template: str = ADDITIVE_TEMPLATE

  def __post_init__(self):
    _score_token_ids(self.tokenizer, self.template)  # Fail at build time.

  def __call__(self, prompts: list[str], completions: list[str], **fields) -> np.ndarray:
    del fields  # The judge sees only the text, never the reference answer.
    dist = _judge_distribution(self.model, self.params, self.tokenizer, self.template, prompts,
                               completions, _score_token_ids(self.tokenizer, self.template))
    return dist @ np.arange(len(SCORE_TOKENS), dtype=np.float32)


def with_params(reward_fn, params):
  """`reward_fn` judging with `params` when it is the model's own judge; any other reward as is.
  The loops call it with the policy's current params before each use."""
  if isinstance(reward_fn, (SelfJudge, AdditiveJudge)):
    return dataclasses.replace(reward_fn, params=params)
  return reward_fn

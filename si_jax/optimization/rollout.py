"""Rollouts: sample a group of completions per problem and lay them out for the update steps.

The layout is the scoring layout (prompt left-padded, completion right-padded), so the same
arrays feed the policy-gradient step, the reference scoring pass and the preference losses.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from si_jax import layout, sampling, tasks
from si_jax.tokenizers import Tokenizer


@dataclasses.dataclass
class Rollout:
  problems: list[tasks.Problem]  # B problems; row r of the arrays belongs to problems[r // G].
  group_size: int  # G completions per problem.
  prompts: list[str]  # [B * G] prompt texts (repeated per sample).
  completions: list[str]  # [B * G] decoded completions (up to eos).
  arrays: dict[str, np.ndarray]  # prompt, prompt_mask [R, P]; completion, completion_mask [R, N].
  finish_reason: np.ndarray  # [R]
  sampler_logprobs: np.ndarray  # [R, N] log p under the sampling policy's unmodified model.

  def take_groups(self, groups) -> 'Rollout':
    """The rollout restricted to the given problem indices (all of each one's samples)."""
    g = self.group_size
    rows = np.concatenate([np.arange(b * g, (b + 1) * g) for b in groups])
    return Rollout(problems=[self.problems[b] for b in groups], group_size=g,
                   prompts=[self.prompts[r] for r in rows],
                   completions=[self.completions[r] for r in rows],
                   arrays={k: v[rows] for k, v in self.arrays.items()},
                   finish_reason=self.finish_reason[rows],
                   sampler_logprobs=self.sampler_logprobs[rows])

  def take_samples(self, k: int) -> 'Rollout':
    """The first k samples of every group: an unbiased subsample, as samples are i.i.d. (TTRL
    votes over a large group and trains on a subsample of it)."""
    g = self.group_size
    if not 0 < k <= g:
      raise ValueError(f'cannot take {k} samples of groups of {g}')
    rows = (np.arange(len(self.problems))[:, None] * g + np.arange(k)[None]).reshape(-1)
    return dataclasses.replace(
        self, group_size=k, prompts=[self.prompts[r] for r in rows],
        completions=[self.completions[r] for r in rows],
        arrays={name: v[rows] for name, v in self.arrays.items()},
        finish_reason=self.finish_reason[rows], sampler_logprobs=self.sampler_logprobs[rows])

  @property
  def answers(self) -> list[str]:
    """Reference answers per row: for verifiable rewards and evaluation only."""
    return [p.answer for p in self.problems for _ in range(self.group_size)]


def rollout(sampler: sampling.Sampler, params, tokenizer: Tokenizer,
            problems: list[tasks.Problem], *, group_size: int, max_new_tokens: int,
            strategy: sampling.Strategy, seed: int) -> Rollout:
  texts = [p.prompt for p in problems]
  _, out = sampler.generate(params, tokenizer, texts, max_new_tokens=max_new_tokens,
                            strategy=strategy, n=group_size, seed=seed)
  prompt, prompt_mask = layout.encode_prompts(tokenizer, texts)
  repeat = lambda x: np.repeat(x, group_size, axis=0)
  completion_mask = np.arange(out.tokens.shape[1])[None] < out.lengths[:, None]
  completions = [tokenizer.decode(row[:n]) for row, n in zip(out.tokens, out.lengths)]
  return Rollout(
      problems=list(problems), group_size=group_size,
      prompts=[t for t in texts for _ in range(group_size)], completions=completions,
      arrays={'prompt': repeat(prompt), 'prompt_mask': repeat(prompt_mask),
              'completion': out.tokens.astype(np.int32), 'completion_mask': completion_mask},
      finish_reason=out.finish_reason, sampler_logprobs=out.logprobs)


def concat(rollouts: list[Rollout]) -> Rollout:
  """The rollouts as one (same group size): prompts stay left-padded and completions
  right-padded, to the widest of the parts."""
  if len({ro.group_size for ro in rollouts}) != 1:
    raise ValueError('cannot concatenate rollouts of different group sizes')
  if len(rollouts) == 1:
    return rollouts[0]
  width = lambda name: max(ro.arrays[name].shape[1] for ro in rollouts)
  p, n = width('prompt'), width('completion')

  def padded(ro: Rollout) -> dict[str, np.ndarray]:
    out = {}
    for name, v in ro.arrays.items():
      missing = (p if name.startswith('prompt') else n) - v.shape[1]
      left = name.startswith('prompt')  # Prompts end where the completion starts.
      out[name] = np.pad(v, ((0, 0), (missing, 0) if left else (0, missing)))
    return out

  parts = [padded(ro) for ro in rollouts]
  return Rollout(
      problems=[x for ro in rollouts for x in ro.problems], group_size=rollouts[0].group_size,
      prompts=[x for ro in rollouts for x in ro.prompts],
      completions=[x for ro in rollouts for x in ro.completions],
      arrays={name: np.concatenate([a[name] for a in parts]) for name in parts[0]},
      finish_reason=np.concatenate([ro.finish_reason for ro in rollouts]),
      sampler_logprobs=np.concatenate([np.pad(ro.sampler_logprobs, (
          (0, 0), (0, n - ro.sampler_logprobs.shape[1]))) for ro in rollouts]))

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

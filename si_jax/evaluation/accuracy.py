"""Accuracy of a model on task problems: greedy exact match and mean sampled reward.

Greedy accuracy is what the model "knows"; the mean verified reward of samples at the rollout
temperature is what RL optimises directly (and rises first: the policy sharpens before its
argmax moves).
"""

from __future__ import annotations

import numpy as np

from si_jax import sampling, tasks
from si_jax.tokenizers import Tokenizer


def greedy_accuracy(model, params, tokenizer: Tokenizer, task: tasks.Task,
                    problems: list[tasks.Problem], max_new_tokens: int, batch_size: int = 256):
  """(mean verifier reward of greedy completions, the completions)."""
  completions = []
  for i in range(0, len(problems), batch_size):
    chunk = problems[i:i + batch_size]
    prompts = tokenizer.encode_batch([p.prompt for p in chunk], bos=True)
    out, lengths = sampling.greedy_generate(model, params, prompts, max_new_tokens,
                                            tokenizer.eos_id)
    completions += [tokenizer.decode(row[:n]) for row, n in zip(out, lengths)]
  rewards = [task.verify(p, c) for p, c in zip(problems, completions)]
  return float(np.mean(rewards)), completions


def sampled_reward(sampler: sampling.Sampler, params, tokenizer: Tokenizer, task: tasks.Task,
                   problems: list[tasks.Problem], *, n: int, max_new_tokens: int,
                   strategy: sampling.Strategy, seed: int = 0) -> float:
  """Mean verifier reward over n samples per problem."""
  texts, _ = sampler.generate(params, tokenizer, [p.prompt for p in problems],
                              max_new_tokens=max_new_tokens, strategy=strategy, n=n, seed=seed)
  return float(np.mean([task.verify(p, c) for p, group in zip(problems, texts) for c in group]))

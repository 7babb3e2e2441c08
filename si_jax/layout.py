"""Token layout: how variable-length id lists become the fixed-shape arrays jitted code takes.

Two layouts, one place:
  * prompt / completion (sampling, scoring, RL, preference pairs, selection scores): prompts
    left-padded so every row's next token lands in the same slot, completions right-padded;
  * SFT rows: bos + prompt + completion + eos right-padded, with a loss mask on the completion.
Widths are bucketed to powers of two, so a loop of calls compiles a handful of shapes. RoPE
positions count only a row's real tokens (`positions`), so left padding changes nothing a row
computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from si_jax.tokenizers import Tokenizer


def bucket(n: int, minimum: int = 16) -> int:
  """Next power of two >= n (at least `minimum`)."""
  return max(minimum, 1 << max(0, n - 1).bit_length())


def left_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int = 0):
  """[B, length] left-padded tokens and their mask."""
  tokens = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    if len(r):
      tokens[i, length - len(r):] = r
      mask[i, length - len(r):] = True
  return tokens, mask


def right_pad(rows: Sequence[Sequence[int]], length: int, pad_id: int = 0):
  """[B, length] right-padded tokens and their mask; longer rows are cut to `length`."""
  tokens = np.full((len(rows), length), pad_id, np.int32)
  mask = np.zeros((len(rows), length), bool)
  for i, r in enumerate(rows):
    r = list(r)[:length]
    tokens[i, :len(r)], mask[i, :len(r)] = r, True
  return tokens, mask


def positions(mask_BxT):
  """RoPE positions of a left-padded mask: 0, 1, ... over real tokens, 0 on padding."""
  return jnp.maximum(jnp.cumsum(mask_BxT, axis=1) - 1, 0).astype(jnp.int32)


def prompt_completion(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                      width: int | None = None):
  """(prompt [B, P], prompt_mask, completion [B, N], completion_mask) from id lists.

  P is bucketed; N is `width` (completions cut to it) or the bucketed longest completion.
  """
  if len(prompts) != len(completions) or not prompts:
    raise ValueError(f'need as many prompts ({len(prompts)}) as completions '
                     f'({len(completions)}), at least one')
  prompt, prompt_mask = left_pad(prompts, bucket(max(len(p) for p in prompts)))
  if width is None:
    width = bucket(max(len(c) for c in completions), minimum=1)
  return (prompt, prompt_mask) + right_pad(completions, width)


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str]):
  """bos + prompt, left-padded to a bucketed width: (tokens [B, P], mask)."""
  ids = tokenizer.encode_batch(list(prompts), bos=True)
  return left_pad(ids, bucket(max(len(i) for i in ids)))


def encode_prompt_completion(tokenizer: Tokenizer, prompts: Sequence[str],
                             completions: Sequence[str], *, eos: bool = True, bare: bool = False,
                             width: int | None = None):
  """Texts in the prompt / completion layout (`prompt_completion`), bos before each prompt.

  bare=True replaces every prompt by bos alone (a completion scored without its instruction).
  """
  if not prompts:
    raise ValueError('need at least one (prompt, completion) pair')
  prompt_ids = ([[tokenizer.bos_id]] * len(prompts) if bare else
                tokenizer.encode_batch(list(prompts), bos=True))
  completion_ids = tokenizer.encode_batch(list(completions), eos=eos)
  return prompt_completion(prompt_ids, completion_ids, width)


def sft_rows(tokenizer: Tokenizer, prompts: Sequence[str], completions: Sequence[str],
             seq_len: int) -> dict[str, np.ndarray]:
  """Right-padded [B, seq_len] SFT arrays: bos + prompt + completion + eos.

  loss_mask is 1 on completion tokens and the eos (what the model must learn to produce);
  segment_ids is 1 on real tokens and 0 on padding. Too-long examples fail, naming the fix.
  """
  if len(prompts) != len(completions):
    raise ValueError(f'{len(prompts)} prompts but {len(completions)} completions')
  p_ids = tokenizer.encode_batch(list(prompts), bos=True)
  c_ids = tokenizer.encode_batch(list(completions), eos=True)
  for i, (p, c) in enumerate(zip(p_ids, c_ids)):
    if len(p) + len(c) > seq_len:
      raise ValueError(f'example {i} has {len(p) + len(c)} tokens > seq_len={seq_len}; raise '
                       f'config.data.seq_len or shorten the problems')
  tokens, real = right_pad([p + c for p, c in zip(p_ids, c_ids)], seq_len)
  loss_mask = real & (np.arange(seq_len) >= np.array([len(p) for p in p_ids])[:, None])
  return {'tokens': tokens, 'loss_mask': loss_mask.astype(np.int32),
          'segment_ids': real.astype(np.int32)}

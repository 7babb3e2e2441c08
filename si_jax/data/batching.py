"""Turn (prompt, completion) text pairs into fixed-shape SFT batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from si_jax.tokenizers import Tokenizer


def sft_batch(tokenizer: Tokenizer, prompts: Sequence[str], completions: Sequence[str],
              seq_len: int) -> dict[str, np.ndarray]:
  """Right-padded [B, seq_len] arrays: bos + prompt + completion + eos.

  loss_mask is 1 on completion tokens and the eos (what the model must learn to produce);
  segment_ids is 1 on real tokens and 0 on padding. Too-long examples fail, naming the fix.
  """
  if len(prompts) != len(completions):
    raise ValueError(f'{len(prompts)} prompts but {len(completions)} completions')
  p_ids = tokenizer.encode_batch(prompts, bos=True)
  c_ids = tokenizer.encode_batch(completions, eos=True)
  batch = {k: np.zeros((len(prompts), seq_len), np.int32)
           for k in ('tokens', 'loss_mask', 'segment_ids')}
  for i, (p, c) in enumerate(zip(p_ids, c_ids)):
    n = len(p) + len(c)
    if n > seq_len:
      raise ValueError(f'example {i} has {n} tokens > seq_len={seq_len}; raise the seq_len '
                       f'(config.data.seq_len) or shorten the problems')
    batch['tokens'][i, :n] = p + c
    batch['loss_mask'][i, len(p):n] = 1
    batch['segment_ids'][i, :n] = 1
  return batch

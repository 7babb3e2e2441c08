"""The token layouts every jitted function takes (si_jax/layout.py)."""

import numpy as np
import pytest

from si_jax import layout
from si_jax.tokenizers import Tokenizer


def test_bucket_is_the_next_power_of_two_above_a_minimum():
  assert [layout.bucket(n) for n in (1, 16, 17, 33)] == [16, 16, 32, 64]
  assert [layout.bucket(n, minimum=1) for n in (1, 3, 4, 5)] == [1, 4, 4, 8]


def test_left_and_right_padding_place_tokens_and_masks():
  tokens, mask = layout.left_pad([[5, 6], [], [7]], 3, pad_id=9)
  np.testing.assert_array_equal(tokens, [[9, 5, 6], [9, 9, 9], [9, 9, 7]])
  np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 0], [0, 0, 1]])
  tokens, mask = layout.right_pad([[5, 6, 7, 8], [4]], 3)
  np.testing.assert_array_equal(tokens, [[5, 6, 7], [4, 0, 0]])  # Longer rows are cut.
  np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0]])


def test_positions_count_real_tokens_only():
  _, mask = layout.left_pad([[5, 6, 7], [8]], 4)
  np.testing.assert_array_equal(layout.positions(mask), [[0, 0, 1, 2], [0, 0, 0, 0]])


def test_prompt_completion_widths_are_bucketed_or_fixed():
  prompt, prompt_mask, completion, completion_mask = layout.prompt_completion(
      [[1, 2, 3], [4]], [[5], [6, 7, 8]])
  assert prompt.shape == (2, 16) and completion.shape == (2, 4)
  assert prompt[0, -3:].tolist() == [1, 2, 3] and prompt_mask.sum() == 4
  assert completion[1, :3].tolist() == [6, 7, 8] and completion_mask.sum() == 4
  assert layout.prompt_completion([[1]], [[2, 3, 4]], width=2)[2].tolist() == [[2, 3]]
  with pytest.raises(ValueError, match='as many prompts'):
    layout.prompt_completion([[1]], [])


def test_sft_rows_put_the_loss_on_the_completion_and_eos():
  tok = Tokenizer.train(['0123456789+='], 32)
  rows = layout.sft_rows(tok, ['12+3='], ['15'], seq_len=12)
  n_prompt, n = 1 + 5, 1 + 5 + 2 + 1  # bos + prompt, + completion + eos.
  assert rows['tokens'][0, :n].tolist() == (tok.encode('12+3=', bos=True) +
                                            tok.encode('15', eos=True))
  assert rows['loss_mask'][0].tolist() == [0] * n_prompt + [1] * 3 + [0] * (12 - n)
  assert rows['segment_ids'][0].tolist() == [1] * n + [0] * (12 - n)
  with pytest.raises(ValueError, match='config.data.seq_len'):
    layout.sft_rows(tok, ['12+3='], ['15'], seq_len=8)

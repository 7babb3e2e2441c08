"""grain pipelines: (prompt, answer) records -> fixed-shape SFT batches, resumable.

  source = tfds_source('procedural_tasks/addition_reversed', 'train', data_dir)
  it = iter(sft_dataset(source, tokenizer, seq_len=32, batch_size=64, seed=0, pack=True))
  batch = next(it)            # tokens, loss_mask, segment_ids, positions: int32 [64, 32]
  state = it.get_state()      # JSON-serialisable: goes into the checkpoint's metadata

Records are dicts with text fields (bytes from TFDS or str). Each process reads its own shard.
Iteration runs in-process: on small CPU machines grain's worker processes cost more than they
save (STACK-NOTES), and in-process iterators checkpoint exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from si_jax.tokenizers import Tokenizer


def tfds_source(name: str, split: str, data_dir: str | None = None):
  """A random-access source for a TFDS dataset already prepared (as array_record) in data_dir.

  Nothing is downloaded at run time: a dataset that is not there fails, saying how to prepare it.
  """
  data_dir = data_dir or os.environ.get('TFDS_DATA_DIR',
                                        os.path.expanduser('~/tensorflow_datasets'))
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f'TFDS dataset {name!r} (split {split!r}) is not prepared in {data_dir}: prepare it there '
        f'once with file_format="array_record" (e.g. `tfds build {name.split("/")[0]} '
        f'--file_format=array_record --data_dir={data_dir}` on a machine with access), or set '
        f'--config.data.data_dir / TFDS_DATA_DIR. ({type(e).__name__}: {e})') from e


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def encode_example(record: dict, tokenizer: Tokenizer, seq_len: int, prompt_key: str = 'prompt',
                   answer_key: str = 'answer') -> dict[str, np.ndarray]:
  """bos + prompt + answer + eos, truncated to seq_len; loss on the answer and eos only."""
  prompt = tokenizer.encode(_text(record[prompt_key]), bos=True)
  answer = tokenizer.encode(_text(record[answer_key]), eos=True)
  tokens = np.asarray(prompt + answer, np.int32)[:seq_len]
  loss_mask = np.zeros(len(tokens), np.int32)
  loss_mask[len(prompt):] = 1
  return {'tokens': tokens, 'loss_mask': loss_mask}


def _pad(example: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
  n = len(example['tokens'])
  out = {k: np.pad(v, (0, seq_len - n)) for k, v in example.items()}
  out['segment_ids'] = (np.arange(seq_len) < n).astype(np.int32)
  out['positions'] = np.where(out['segment_ids'] > 0, np.arange(seq_len), 0).astype(np.int32)
  return out


def _from_packed(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {'tokens': packed['tokens'].astype(np.int32),
          'loss_mask': packed['loss_mask'].astype(np.int32),
          'segment_ids': packed['tokens_segment_ids'].astype(np.int32),
          'positions': packed['tokens_positions'].astype(np.int32)}


def sft_dataset(source: Sequence[Any], tokenizer: Tokenizer, *, seq_len: int, batch_size: int,
                seed: int, pack: bool = False, shuffle: bool = True, num_epochs: int | None = None,
                prompt_key: str = 'prompt', answer_key: str = 'answer',
                shard_index: int | None = None, shard_count: int | None = None
                ) -> grain.IterDataset:
  """Tokenized, padded (or packed), shuffled, batched SFT examples of this process's shard.

  num_epochs=None repeats forever, reshuffling every epoch. With pack=True several examples
  share a row (first-fit), told apart by segment_ids and restarted positions.
  """
  shard_index = jax.process_index() if shard_index is None else shard_index
  shard_count = jax.process_count() if shard_count is None else shard_count
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  if len(ds) == 0:
    raise ValueError(f'sft_dataset: shard {shard_index}/{shard_count} of the source is empty')
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.map(lambda r: encode_example(r, tokenizer, seq_len, prompt_key, answer_key))
  it = ds.to_iter_dataset()
  if pack:
    it = grain.experimental.FirstFitPackIterDataset(
        it, length_struct={'tokens': seq_len, 'loss_mask': seq_len},
        num_packing_bins=batch_size, shuffle_bins=False).map(_from_packed)
  else:
    it = it.map(lambda e: _pad(e, seq_len))
  return it.batch(batch_size, drop_remainder=True)

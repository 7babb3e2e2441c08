"""SentencePiece tokenizers: load a `.model` file, or train a small one in-process on task text.

Special ids are fixed across every tokenizer si_jax trains, so configs can rely on them:
pad = 0, unk = 1, bos = 2, eos = 3. A loaded model keeps its own (a Llama `tokenizer.model` has
unk = 0, bos = 1, eos = 2 and no pad: padding then uses unk, which is never attended to).
Text is not normalised (identity rule, no dummy prefix, whitespace kept), so
`decode(encode(s)) == s` for any string whose characters are in the vocab.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
FILENAME = 'tokenizer.model'


class Tokenizer:
  """A thin, picklable wrapper over `SentencePieceProcessor` with batch helpers."""

  def __init__(self, model_proto: bytes):
    self.model_proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.unk_id, self.bos_id, self.eos_id = self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id()
    self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else self.unk_id
    if min(self.bos_id, self.eos_id) < 0:
      raise ValueError('the sentencepiece model has no bos or eos piece: si_jax needs both '
                       '(train it with bos_id and eos_id set)')

  # --- Construction ----------------------------------------------------------------------------

  @classmethod
  def load(cls, path: str) -> Tokenizer:
    """Loads a `.model` file, or `<dir>/tokenizer.model` when given a directory."""
    if os.path.isdir(path):
      path = os.path.join(path, FILENAME)
    if not os.path.exists(path):
      raise FileNotFoundError(f'no sentencepiece model at {path!r}: pass a .model file or a '
                              f'directory holding {FILENAME} (e.g. a run\'s checkpoint dir)')
    with open(path, 'rb') as f:
      proto = f.read()
    try:
      return cls(proto)
    except RuntimeError as e:
      raise ValueError(f'{path} is not a sentencepiece model ({len(proto)} bytes; {e}): restore '
                       f'the tokenizer.model saved with the run or the checkpoint') from e

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = 'char',
            user_defined_symbols: Sequence[str] = (), byte_fallback: bool = False) -> Tokenizer:
    """Trains in memory (tens of ms for task-sized vocabularies).

    model_type 'char' gives one token per character (e.g. digit-level arithmetic); 'bpe' and
    'unigram' learn subwords. For 'char', vocab_size is an upper bound: the vocab holds the 4
    special pieces plus the characters seen. A newline is always a piece (sentencepiece would
    otherwise treat it as a sentence break): few-shot prompts put one example per line.
    """
    texts = [t for t in texts if t]
    if not texts:
      raise ValueError('Tokenizer.train: the corpus is empty (no non-empty text): pass the '
                       'task\'s alphabet or sample texts to learn the pieces from')
    symbols = ['\n'] + [s for s in user_defined_symbols if s != '\n']
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, pad_id=PAD_ID, unk_id=UNK_ID,
        bos_id=BOS_ID, eos_id=EOS_ID, normalization_rule_name='identity',
        add_dummy_prefix=False, remove_extra_whitespaces=False, split_digits=True,
        user_defined_symbols=symbols, byte_fallback=byte_fallback,
        hard_vocab_limit=model_type != 'char', minloglevel=2, num_threads=1)
    return cls(model.getvalue())

  def save(self, path: str) -> str:
    """Writes the model proto; a directory gets `<dir>/tokenizer.model`. Returns the file path."""
    if os.path.isdir(path) or not path.endswith('.model'):
      os.makedirs(path, exist_ok=True)
      path = os.path.join(path, FILENAME)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
      f.write(self.model_proto)
    os.replace(tmp, path)  # atomic: a reader never sees half a file.
    return path

  def __getstate__(self):
    return {'model_proto': self.model_proto}

  def __setstate__(self, state):
    self.__init__(state['model_proto'])

  # --- Ids ---------------------------------------------------------------------------------------

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def check_model_vocab(self, model_vocab_size: int):
    """Fails clearly when a model cannot embed every id this tokenizer emits."""
    if model_vocab_size < self.vocab_size:
      raise ValueError(
          f'tokenizer has {self.vocab_size} pieces but the model vocab_size is {model_vocab_size}: '
          f'this tokenizer does not belong to this model. Load the tokenizer saved with the '
          f'checkpoint, or set config.model.vocab_size >= {self.vocab_size}.')

  # --- Encode / decode ---------------------------------------------------------------------------

  def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
    return self._wrap(self.sp.encode(_checked_text(text, 0)), bos, eos)

  def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False):
    texts = [_checked_text(t, i) for i, t in enumerate(texts)]
    return [self._wrap(ids, bos, eos) for ids in self.sp.encode(texts)]

  def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
    return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

  def decode(self, ids) -> str:
    """Decodes up to the first eos; pad/bos are dropped; ids past the vocab (a model's padded
    vocab) decode as unk."""
    ids = [int(i) if 0 <= i < self.vocab_size else self.unk_id
           for i in np.asarray(ids).reshape(-1)]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self.sp.decode([i for i in ids if i not in (self.pad_id, self.bos_id)])

  def decode_batch(self, ids_batch) -> list[str]:
    return [self.decode(ids) for ids in ids_batch]


def _checked_text(text, index: int) -> str:
  """Text the tokenizer can encode: a str of valid Unicode (bytes and lone surrogates from a
  bad decode fail here, naming the item, instead of deep inside sentencepiece)."""
  if not isinstance(text, str):
    raise TypeError(f'text {index} is a {type(text).__name__}, not a str: decode it first '
                    f'(e.g. data.decode("utf-8", errors="replace"))')
  try:
    text.encode('utf-8')
  except UnicodeEncodeError as e:
    raise ValueError(f'text {index} is not valid Unicode ({e.reason} at {e.start}): decode '
                     f'its bytes with errors="replace"') from e
  return text

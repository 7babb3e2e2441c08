"""Tokenizer: round trips, special ids, save/load, clear errors."""

import pytest

from si_jax.tokenizers import BOS_ID, EOS_ID, PAD_ID, Tokenizer


@pytest.fixture(scope='module')
def tok():
  return Tokenizer.train(['0123456789+-*/=() ', 'abcdefghij>'], vocab_size=64)


@pytest.mark.parametrize('text', ['123+456=579', 'abc>cba', ' a  b ', '', '(1+2)*3 = 9'])
def test_round_trip(tok, text):
  ids = tok.encode(text, bos=True, eos=True)
  assert ids[0] == BOS_ID and ids[-1] == EOS_ID
  assert tok.decode(ids) == text


def test_char_level_and_special_ids(tok):
  assert len(tok.encode('12345')) == 5  # digit-level
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  assert tok.vocab_size == 4 + len(set('\n0123456789+-*/=() abcdefghij>'))  # + newline


def test_batch_encode_decode_stops_at_eos(tok):
  texts = ['1+1=2', 'abc']
  ids = tok.encode_batch(texts, eos=True)
  padded = [i + [PAD_ID] * 3 + tok.encode('999') for i in ids]  # junk after eos is ignored.
  assert tok.decode_batch(padded) == texts


def test_save_load(tok, tmp_path):
  path = tok.save(str(tmp_path))
  assert path.endswith('tokenizer.model')
  loaded = Tokenizer.load(str(tmp_path))
  assert loaded.encode('12+3=15') == tok.encode('12+3=15')


def test_bpe_model_trains(tmp_path):
  texts = ['the cat sat on the mat', 'the dog sat on the log'] * 50
  bpe = Tokenizer.train(texts, vocab_size=40, model_type='bpe')
  assert bpe.decode(bpe.encode('the cat sat')) == 'the cat sat'
  assert len(bpe.encode('the cat sat')) < len('the cat sat')


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='tokenizer.model'):
    Tokenizer.load(str(tmp_path))


def test_model_vocab_too_small_is_explained(tok):
  with pytest.raises(ValueError, match='vocab_size'):
    tok.check_model_vocab(8)
  tok.check_model_vocab(tok.vocab_size)


def test_newline_is_a_piece(tok):
  assert tok.decode(tok.encode('1+1=2\n2+2=4\n')) == '1+1=2\n2+2=4\n'

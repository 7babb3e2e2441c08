"""Static curation: the TFDS builder and the grain pipelines (masks, packing, resume, shards)."""

import numpy as np
import pytest

from si_jax import tasks
from si_jax.data import pipeline, tfds_tasks
from si_jax.tokenizers import Tokenizer

SEQ = 32


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  config = tfds_tasks.TaskConfig(name='addition_small', task_name='addition_reversed',
                                 train_per_difficulty=100, test_per_difficulty=20)
  builder = tfds_tasks.ProceduralTasks(config=config, data_dir=data_dir,
                                       file_format='array_record')
  builder.download_and_prepare()
  tokenizer = Tokenizer.train([tasks.get_task('addition_reversed').alphabet()], 32)
  return data_dir, tokenizer


def _source(data_dir, split='train'):
  return pipeline.tfds_source('procedural_tasks/addition_small', split, data_dir)


def test_builder_splits_are_fixed_and_disjoint(prepared):
  data_dir, _ = prepared
  train, test = _source(data_dir), _source(data_dir, 'test')
  train_prompts = {train[i]['prompt'] for i in range(len(train))}
  assert 700 < len(train) == len(train_prompts) <= 8 * 100
  test_prompts = {test[i]['prompt'] for i in range(len(test))}
  assert test_prompts and not train_prompts & test_prompts
  task = tasks.get_task('addition_reversed')
  for i in range(0, len(train), 97):
    r = train[i]
    problem = tasks.Problem(r['prompt'].decode(), r['answer'].decode(), int(r['difficulty']))
    assert task.verify(problem, problem.answer) == 1.0


def _check_batch(batch, tokenizer, source_answers):
  """Every segment is bos + prompt + answer + eos with loss exactly on answer + eos."""
  for key in ('tokens', 'loss_mask', 'segment_ids', 'positions'):
    assert batch[key].shape == (8, SEQ) and batch[key].dtype == np.int32
  for row in range(8):
    seg = batch['segment_ids'][row]
    assert (batch['tokens'][row][seg == 0] == 0).all()
    assert (batch['loss_mask'][row][seg == 0] == 0).all()
    for s in set(seg[seg > 0].tolist()):
      idx = np.nonzero(seg == s)[0]
      assert (batch['positions'][row][idx] == np.arange(len(idx))).all()
      tokens, mask = batch['tokens'][row][idx], batch['loss_mask'][row][idx]
      assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
      answer = tokenizer.decode(tokens[mask == 1])
      prompt = tokenizer.decode(tokens[mask == 0])
      assert prompt.endswith('=') and source_answers[prompt] == answer


@pytest.mark.parametrize('pack', [False, True])
def test_batches_have_correct_masks_and_segments(prepared, pack):
  data_dir, tokenizer = prepared
  source = _source(data_dir)
  answers = {source[i]['prompt'].decode(): source[i]['answer'].decode() for i in range(len(source))}
  it = iter(pipeline.sft_dataset(source, tokenizer, seq_len=SEQ, batch_size=8, seed=0, pack=pack))
  batches = [next(it) for _ in range(3)]
  for batch in batches:
    _check_batch(batch, tokenizer, answers)
  if pack:  # several examples share a row
    assert max(b['segment_ids'].max() for b in batches) > 1


@pytest.mark.parametrize('pack', [False, True])
def test_resumed_iterator_yields_the_same_batches(prepared, pack):
  data_dir, tokenizer = prepared
  make = lambda: iter(pipeline.sft_dataset(_source(data_dir), tokenizer, seq_len=SEQ,
                                           batch_size=8, seed=3, pack=pack))
  it = make()
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = make()
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_epochs_reshuffle_and_seeds_differ(prepared):
  data_dir, tokenizer = prepared
  def first_tokens(seed, skip):
    it = iter(pipeline.sft_dataset(_source(data_dir), tokenizer, seq_len=SEQ, batch_size=8,
                                   seed=seed))
    for _ in range(skip):
      next(it)
    return next(it)['tokens']
  assert not np.array_equal(first_tokens(0, 0), first_tokens(1, 0))
  epoch = len(_source(data_dir)) // 8
  assert not np.array_equal(first_tokens(0, 0), first_tokens(0, epoch))  # same slot, epoch 2


def test_process_shards_are_disjoint(prepared):
  data_dir, tokenizer = prepared
  seen = []
  for index in range(2):
    it = iter(pipeline.sft_dataset(_source(data_dir), tokenizer, seq_len=SEQ, batch_size=8,
                                   seed=0, shuffle=False, num_epochs=1, shard_index=index,
                                   shard_count=2))
    seen.append({tuple(row) for batch in it for row in batch['tokens']})
  assert not seen[0] & seen[1]
  n = len(_source(data_dir))
  assert [len(s) for s in seen] == [(n + 1) // 2 // 8 * 8, n // 2 // 8 * 8]  # full batches only


def test_missing_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match='array_record'):
    pipeline.tfds_source('gsm8k', 'train', str(tmp_path))


def test_iterator_state_round_trips_through_a_checkpoint(prepared, tmp_path):
  """The data cursor lives in the checkpoint's JSON metadata, next to the train state."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from si_jax import checkpoint  # pylint: disable=g-import-not-at-top
  data_dir, tokenizer = prepared
  make = lambda: iter(pipeline.sft_dataset(_source(data_dir), tokenizer, seq_len=SEQ,
                                           batch_size=8, seed=5, pack=True))
  it = make()
  for _ in range(4):
    next(it)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(4, {'step': jnp.int32(4)}, {'data_iterator': it.get_state()})
  expected = next(it)
  resumed = make()
  resumed.set_state(checkpoint.Checkpointer(str(tmp_path)).read_meta()['data_iterator'])
  got = next(resumed)
  for k in expected:
    np.testing.assert_array_equal(got[k], expected[k])

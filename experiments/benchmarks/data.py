"""Acquisition and curation throughput on this machine (issue: tasks and data acquisition).

  python -m experiments.benchmarks.data

Prints: examples/s of each task's generator and verifier, the sandbox's overhead per execution
(median ms of `run_python('pass')`), and TFDS + grain throughput (padded and packed batches).
"""

import statistics
import tempfile
import time

from absl import app

from si_jax import tasks
from si_jax.tasks import sandbox
from si_jax.data import pipeline, tfds_tasks
from si_jax.tokenizers import Tokenizer

TASKS = ['reverse', 'addition_reversed', 'addition', 'multiplication', 'multiplication_cot',
         'countdown', 'code']


def _rate(fn, n):
  start = time.perf_counter()
  fn()
  return n / (time.perf_counter() - start)


def main(_):
  print('| task | generate ex/s | verify ex/s |')
  print('| --- | --- | --- |')
  for name in TASKS:
    try:
      task = tasks.get_task(name)
    except ValueError:
      continue
    n = 40 if name == 'code' else 2000
    d = task.difficulties[len(task.difficulties) // 2]
    gen = _rate(lambda: task.generate(seed=0, n=n, difficulty=d), n)
    problems = task.generate(seed=0, n=n, difficulty=d)
    ver = _rate(lambda: [task.verify(p, p.answer) for p in problems], n)
    print(f'| {name} | {gen:,.0f} | {ver:,.0f} |')

  times = []
  for _ in range(20):
    start = time.perf_counter()
    sandbox.run_python('pass')
    times.append(time.perf_counter() - start)
  print(f'\nsandbox overhead per execution: median {statistics.median(times) * 1e3:.1f} ms '
        f'(20 runs of `pass`)')

  with tempfile.TemporaryDirectory() as data_dir:
    start = time.perf_counter()
    tfds_tasks.ProceduralTasks(config='addition_reversed', data_dir=data_dir,
                               file_format='array_record').download_and_prepare()
    prepare = time.perf_counter() - start
    source = pipeline.tfds_source('procedural_tasks/addition_reversed', 'train', data_dir)
    print(f'\nTFDS prepare addition_reversed ({len(source)} train examples): {prepare:.2f} s')
    tok = Tokenizer.train([tasks.get_task('addition_reversed').alphabet()], 32)
    print('| grain pipeline | examples/s |')
    print('| --- | --- |')
    for pack in (False, True):
      it = iter(pipeline.sft_dataset(source, tok, seq_len=32, batch_size=64, seed=0, pack=pack))
      next(it)
      rate = _rate(lambda: [next(it) for _ in range(50)], 50 * 64)
      print(f"| {'packed' if pack else 'padded'} 64 x 32 | {rate:,.0f} |")


if __name__ == '__main__':
  app.run(main)

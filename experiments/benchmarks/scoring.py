"""Selection scoring throughput on REF-25M (shared/BENCHMARKS.md) at 128-token examples.

  python -m experiments.benchmarks.scoring [--examples=256] [--batch_size=32]

Each example is a 32-token prompt and a 96-token completion (random ids). Reports examples/s of
the perplexity, entropy and embedding passes (one forward each) and of IFD (two forwards).
"""

import time

import jax
import numpy as np
from absl import app, flags

from configs import base
from si_jax import models
from si_jax.selection import scores

_EXAMPLES = flags.DEFINE_integer('examples', 256, 'Examples scored.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Examples per jitted pass.')


class _IdTokenizer:
  """Maps the characters of a random string 1:1 to ids, so lengths are exact."""
  bos_id, eos_id, pad_id = 2, 3, 0

  def encode_batch(self, texts, bos=False, eos=False):
    return [([2] if bos else []) + [4 + ord(c) - 0x100 for c in t] + ([3] if eos else [])
            for t in texts]


def main(_):
  cfg = models.TransformerConfig.from_config_dict(base.get_config().model)
  model, params = models.build(cfg, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  text = lambda n: ''.join(chr(0x100 + int(i)) for i in rng.integers(0, cfg.vocab_size - 4, n))
  examples = [{'prompt': text(31), 'completion': text(95)} for _ in range(_EXAMPLES.value)]
  kw = dict(model=model, params=params, tokenizer=_IdTokenizer(), batch_size=_BATCH.value)
  print(f'REF-25M ({models.param_count(params):,} params), {len(examples)} examples of 128 '
        f'tokens, batch {_BATCH.value}, {jax.devices()[0].platform}')
  print('| score | examples/s |')
  print('| --- | --- |')
  for name in ('perplexity', 'entropy', 'embedding', 'ifd'):
    scores.compute(name, examples[:_BATCH.value], **kw)  # compile
    start = time.perf_counter()
    scores.compute(name, examples, **kw)
    print(f'| {name} | {len(examples) / (time.perf_counter() - start):.1f} |')


if __name__ == '__main__':
  app.run(main)

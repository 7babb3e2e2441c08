"""Speculative decoding speed-up: a target and a smaller draft, both trained on string reversal.

  python -m experiments.benchmarks.speculative [--k=4] [--prompts=32]

Trains (or reuses, from --workdir) the target (d=128, 4 layers) and a draft ~8x smaller (d=64,
2 layers) with the SFT loop, then decodes held-out prompts greedily with plain decoding and with
speculative decoding (batch size 1), reporting tokens/s, target passes per token and the
acceptance rate. Greedy outputs are checked identical.
"""

import os
import time


from absl import app, flags, logging

from configs import sft_reverse
from si_jax import experiment, models, train
from si_jax.refinement import speculative

_K = flags.DEFINE_integer('k', 4, 'Draft tokens per block.')
_PROMPTS = flags.DEFINE_integer('prompts', 32, 'Held-out prompts decoded.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/si_jax/speculative', 'Where the models train.')


def _train(name, d_model, layers, steps):
  c = sft_reverse.get_config()
  c.workdir = os.path.join(_WORKDIR.value, name)
  c.model.d_model, c.model.num_layers, c.model.head_dim = d_model, layers, d_model // 4
  c.model.mlp_dim, c.train.num_steps, c.train.eval_size = 3 * d_model, steps, 100
  train.run(c)
  exp, state = experiment.setup(c, 1)
  exp.ckpt.close()
  return exp, state.params


def main(_):
  logging.set_verbosity(logging.WARNING)
  target, target_params = _train('target', 128, 4, 600)
  draft, draft_params = _train('draft_d64_l2', 64, 2, 600)
  n_t, n_d = models.param_count(target_params), models.param_count(draft_params)
  problems = target.task.sample([7, 1], _PROMPTS.value)
  prompts = target.tokenizer.encode_batch([p.prompt for p in problems], bos=True)
  kwargs = dict(max_new_tokens=10, eos_id=target.tokenizer.eos_id)
  for p in prompts[:2]:  # compile both paths
    speculative.plain_decode(target.model, target_params, p, **kwargs)
    speculative.speculative_decode(target.model, target_params, draft.model,
                                   draft_params, p, k=_K.value, **kwargs)
  rows = {}
  for name in ('plain', 'speculative'):
    start, tokens, passes, accepted, drafted, outs = time.perf_counter(), 0, 0, 0, 0, []
    for p in prompts:
      if name == 'plain':
        out = speculative.plain_decode(target.model, target_params, p, **kwargs)
      else:
        out = speculative.speculative_decode(target.model, target_params, draft.model,
                                             draft_params, p, k=_K.value, **kwargs)
      tokens, passes = tokens + len(out.tokens), passes + out.target_passes
      accepted, drafted = accepted + out.accepted, drafted + out.drafted
      outs.append(list(out.tokens))
    rows[name] = (tokens / (time.perf_counter() - start), passes / tokens,
                  accepted / max(drafted, 1), outs)
  assert rows['plain'][3] == rows['speculative'][3], 'greedy outputs differ'
  print(f'target {n_t:,} params, draft {n_d:,} params ({n_t / n_d:.1f}x smaller), k={_K.value}, '
        f'{len(prompts)} prompts, batch 1, greedy (outputs identical)')
  print('| decoding | tokens/s | target passes / token | acceptance |')
  print('| --- | --- | --- | --- |')
  for name, (tps, ppt, acc, _) in rows.items():
    print(f"| {name} | {tps:.1f} | {ppt:.2f} | {acc if name != 'plain' else float('nan'):.2f} |")
  print(f"speed-up: {rows['speculative'][0] / rows['plain'][0]:.2f}x")



if __name__ == '__main__':
  app.run(main)

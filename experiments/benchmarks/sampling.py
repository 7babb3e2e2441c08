"""SAMPLE benchmark (shared/BENCHMARKS.md): REF-25M, 32 prompt tokens, exactly 64 new, greedy.

  python -m experiments.benchmarks.sampling [--batch_sizes=1,16,64] [--repeats=3] [--nono_cache]
      [--nooutput_major]
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m experiments.benchmarks.sampling \
      --tensor=2   # every weight split over 2 CPU devices (one thread each), as on a GPU pair

For each batch size: prefill time, decode tokens/s (B * 64 / total time), time per decode step,
process peak RSS, and the roofline bounds on this machine, measured here (matmul peak) or taken
from STACK-NOTES (memory bandwidth): decode step >= max((param + KV bytes) / bandwidth,
2 * params * B / peak); prefill >= 2 * params * B * 32 / peak. The matmul peak is measured
before and after each batch size (the higher one is kept): this machine's speed drifts by tens
of percent within minutes, and a peak read once at the start made the % column drift with it.
The baseline decodes without a KV cache: every step recomputes the full forward over a fixed
96-token buffer.
"""

import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import base
from si_jax import layout, models, sampling, sharding
from experiments.benchmarks.train_step import matmul_peak_flops

_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '16', '64'], 'Batch sizes.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per batch size (median reported).')
_BANDWIDTH = flags.DEFINE_float('bandwidth_gbs', 35.0, 'Memory bandwidth, GB/s (STACK-NOTES).')
_NO_CACHE = flags.DEFINE_bool('no_cache', True, 'Also time the no-cache baseline (minutes at B=64).')
_OUTPUT_MAJOR = flags.DEFINE_bool('output_major', None,
                                  'Sampler(output_major=...); unset: the sampler\'s default.')
_TENSOR = flags.DEFINE_integer('tensor', 1, 'Tensor-parallel devices the sampler splits the '
                               'weights over (heads, MLP, vocab); > 1 needs as many devices.')
PROMPT, NEW = 32, 64


def _timed(fn, repeats):
  fn()  # warm-up / compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(_):
  cfg = models.TransformerConfig.from_config_dict(base.get_config().model)
  model, params = models.build(cfg, jax.random.PRNGKey(0))
  n_params = models.param_count(params)
  mesh = None
  if _TENSOR.value > 1:
    if len(jax.devices()) < _TENSOR.value:
      raise ValueError(f'--tensor={_TENSOR.value} needs as many devices; this process has '
                       f'{len(jax.devices())}. On a CPU set XLA_FLAGS=--xla_force_host_platform_'
                       f'device_count={_TENSOR.value} before the command')
    mesh = sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': _TENSOR.value},
                              jax.devices()[:_TENSOR.value])
  sampler = sampling.Sampler(model, mesh, output_major=_OUTPUT_MAJOR.value)
  params = sampler.place_params(params)
  no_cache_step = jax.jit(lambda p, t: jnp.argmax(models.forward(model, p, t)[:, -1], -1))
  print(f'REF-25M: {n_params:,} params; bandwidth {_BANDWIDTH.value:.0f} GB/s; '
        f'devices {jax.devices()[0].platform}, tensor-parallel over {_TENSOR.value}')
  print('| B | decode | matmul peak | prefill | bound | decode tok/s | bound tok/s | % of bound | '
        'ms/step | no-cache tok/s | peak RSS |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for b in map(int, _BATCH_SIZES.value):
    peak_before = matmul_peak_flops()
    rng = np.random.default_rng(b)
    prompts = rng.integers(4, cfg.vocab_size, (b, PROMPT)).tolist()
    tokens, mask = layout.left_pad(prompts, PROMPT)
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    prefill = lambda: jax.block_until_ready(sampler._prefill(model, params, tokens, mask,
                                                             PROMPT + NEW))
    prefill_time = _timed(prefill, _REPEATS.value)
    total = _timed(lambda: sampler.sample(params, prompts, max_new_tokens=NEW, eos_id=-1),
                   _REPEATS.value)
    step_time = (total - prefill_time) / NEW
    peak = max(peak_before, matmul_peak_flops())
    kv_bytes = 2 * cfg.num_layers * b * (PROMPT + NEW) * cfg.num_kv_heads * cfg.head_dim * 4
    step_bound = max((n_params * 4 + kv_bytes) / (_BANDWIDTH.value * 1e9),
                     2 * n_params * b / peak)
    prefill_bound = 2 * n_params * b * PROMPT / peak
    bound_tps = b * NEW / (prefill_bound + NEW * step_bound)
    no_cache_tps = float('nan')
    if _NO_CACHE.value:
      buf = jnp.zeros((b, PROMPT + NEW), jnp.int32).at[:, :PROMPT].set(tokens)
      def no_cache():
        t = buf
        for i in range(NEW):
          t = t.at[:, PROMPT + i].set(no_cache_step(params, t))
        jax.block_until_ready(t)
      no_cache_tps = b * NEW / _timed(no_cache, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    layout_name = ('output-major' if sampling.decode_output_major(sampler.output_major, cfg, b)
                   else 'batch-major')
    print(f'| {b} | {layout_name} | {peak / 1e9:.0f} GFLOP/s | {prefill_time * 1e3:.1f} ms | '
          f'{prefill_bound * 1e3:.1f} ms | '
          f'{b * NEW / total:,.0f} | {bound_tps:,.0f} | {b * NEW / total / bound_tps:.0%} | '
          f'{step_time * 1e3:.2f} | {no_cache_tps:,.0f} | {rss:.2f} GiB |')


if __name__ == '__main__':
  app.run(main)

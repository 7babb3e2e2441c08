"""What many tests build: tiny models and configs derived from the real ones (configs/*:tiny),
the data-parallel mesh that learning tests run on, and the weak base model they start from."""

import ast
import fcntl
import gc
import os
import pathlib

from configs import rejection_sampling, self_train_arithmetic, sft_reverse
from si_jax import models, train
from si_jax.refinement import self_refine


def tiny_model_config(**overrides) -> models.TransformerConfig:
  """The demo's model section, shrunk: 2 layers, d=32, 4 heads over 2 KV heads."""
  base = dict(sft_reverse.get_config().model)
  base.update(vocab_size=32, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
              mlp_dim=64)
  base.update(overrides)
  return models.TransformerConfig(**base)


def tiny_sft_config(workdir: str, **train_overrides):
  """configs/sft_reverse.py:tiny on a 2 x 4 (data x fsdp) mesh of the 8 fake devices."""
  c = sft_reverse.get_config('tiny')
  c.workdir = workdir
  c.mesh.data, c.mesh.fsdp = 2, -1
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


def tiny_loop_config(workdir: str, **loop_overrides):
  """configs/self_train_arithmetic.py:tiny (the main job's loop in seconds), data-parallel."""
  c = self_train_arithmetic.get_config('tiny')
  c.workdir = workdir
  data_parallel(c)
  for key, value in loop_overrides.items():
    c.loop[key] = value
  return c


def data_parallel(config):
  """Puts a learning test's config on the pure data-parallel mesh (data=-1).

  On fake CPU devices FSDP's parameter gathers dominate a tiny model's step: 35 ms data-parallel,
  78 ms on data=2 x fsdp=4, 122 ms on fsdp=8 (3-layer d=64 SFT step, batch 64, this machine).
  Learning tests check learning; sharding has its own equality tests.
  """
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
  return config


# What the weak base's tokenizer knows beyond the task's letters: self-refine's critique
# templates ('|ok?n') and the yes / no verdicts of the binary judge ('y').
WEAK_BASE_EXTRA_CHARS = self_refine.template_alphabet(self_refine.REVISE_TEMPLATE) + 'y'


def weak_base_config(workdir: str, seed: int = 0):
  """configs/rejection_sampling.py's base phase: 60 SFT steps on 512 labelled reversals of 1-8
  letters (~25% greedy exact match: short strings learnt, long ones not), data-parallel. The
  seed draws the seed set, the held-out set and the initialisation."""
  c = rejection_sampling.get_config()
  c.workdir, c.seed = workdir, seed
  c.tokenizer_extra_chars = WEAK_BASE_EXTRA_CHARS
  return data_parallel(c)


def build_weak_base(root: str, seed: int = 0) -> str:
  """The weak base's workdir under `root`, trained once however many pytest-xdist workers ask
  (a file lock; the others find it done). GRO and test-time methods warm-start from it."""
  name = 'weak_base' if seed == 0 else f'weak_base_seed{seed}'
  config = weak_base_config(os.path.join(root, name), seed)
  done = os.path.join(root, f'{name}.done')
  with open(os.path.join(root, f'{name}.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not os.path.exists(done):
      train.warm_start(config)
      open(done, 'w').close()
  return os.path.join(config.workdir, 'base')


def parse_python(path: pathlib.Path) -> ast.Module:
  """ast.parse with the cyclic garbage collector paused.

  On Python 3.11 a collection during a parse can run a finalizer that logs a traceback (asyncio's
  "exception was never retrieved"), and 3.11 formats tracebacks by parsing source itself. That
  nested parse corrupts the outer one's depth count: "SystemError: AST constructor recursion depth
  mismatch" (seen once in CI; the family of cpython#106905).
  """
  source = path.read_text()
  was_enabled = gc.isenabled()
  gc.disable()
  try:
    return ast.parse(source)
  finally:
    if was_enabled:
      gc.enable()

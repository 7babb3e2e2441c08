"""A run's latest params and its tokenizer as a Hugging Face checkpoint (si_jax/models/hf.py).

  python -m si_jax.export --run=<si_jax workdir> --out=<dir> [--dtype=bfloat16]
"""

from __future__ import annotations

import os

from absl import app, flags

from si_jax import checkpoint, experiment, sharding
from si_jax.models import hf, transformer
from si_jax.tokenizers import Tokenizer


def export_run(workdir: str, out: str, dtype: str | None = None) -> str:
  """Writes the latest params of the si_jax run in `workdir` (and its tokenizer) as an HF
  checkpoint in `out`; returns `out`."""
  meta = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints')).read_meta()
  if 'model_config' not in meta:
    raise ValueError(f'{workdir}: its checkpoint has no model_config; re-save it with this code')
  cfg = transformer.TransformerConfig(**meta['model_config'])
  mesh = sharding.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1})
  _, abstract = transformer.abstract_model(cfg)
  shardings = sharding.named_shardings(transformer.logical_axes(cfg), abstract, mesh)
  params = experiment.load_params(workdir, cfg, shardings)
  return hf.save(out, cfg, params, Tokenizer.load(workdir), dtype)


if __name__ == '__main__':
  _RUN = flags.DEFINE_string('run', None, 'An si_jax run directory (its workdir).', required=True)
  _OUT = flags.DEFINE_string('out', None, 'Where the HF checkpoint goes.', required=True)
  _DTYPE = flags.DEFINE_enum('dtype', None, list(hf.PARAM_DTYPES),
                             'Saved dtype (default: as run).')
  app.run(lambda _: print(export_run(_RUN.value, _OUT.value, _DTYPE.value)))

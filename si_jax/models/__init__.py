"""Decoder-only transformer LM (see transformer.py)."""
from si_jax.models.transformer import (KVCache, Model, Transformer, TransformerConfig,
                                       abstract_model, build, forward, forward_with_cache,
                                       init_cache, logical_axes, output_major,
                                       param_count)

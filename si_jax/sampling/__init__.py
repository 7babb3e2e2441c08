"""Generation with a KV cache (the G of GRO)."""
from si_jax.sampling.sampler import bucket, greedy_generate, left_pad

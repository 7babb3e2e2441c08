"""Generation with a KV cache (the G of GRO): strategies, the sampler, scoring."""
from si_jax.sampling.sampler import (FINISH_REASONS, SampleOutput, Sampler, decode_output_major,
                                     greedy_generate)
from si_jax.sampling.strategies import Greedy, MinP, Strategy, Temperature, TopK, TopP
from si_jax.sampling.scoring import completion_logprobs, score, score_tokens

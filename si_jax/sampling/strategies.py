"""Sampling strategies: small frozen dataclasses, each turning logits into a distribution.

`process(logits)` returns the logits of the distribution actually sampled from (temperature
applied, excluded tokens at -inf); `sample(logits, rngs)` draws from it and returns the token and
its log-probability under that distribution. Strategies are hashable: they are static arguments
of the jitted decode loop.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class Strategy:
  temperature: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f'temperature={self.temperature} must be >= 0 (0 means greedy)')

  def process(self, logits_BxV):
    return logits_BxV / max(self.temperature, 1e-6)

  def sample(self, logits_BxV, rngs_B):
    """(tokens [B] int32, log-prob of each under the processed distribution [B]).

    One key per row, so a row's draw does not depend on which other rows share its batch.
    """
    logits = self.process(logits_BxV.astype(jnp.float32))
    if self.temperature == 0:
      tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      return tokens, jnp.zeros(tokens.shape, jnp.float32)
    tokens = jax.vmap(jax.random.categorical)(rngs_B, logits).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return tokens, jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


@dataclasses.dataclass(frozen=True)
class Greedy(Strategy):
  temperature: float = 0.0


@dataclasses.dataclass(frozen=True)
class Temperature(Strategy):
  """softmax(logits / T)."""


@dataclasses.dataclass(frozen=True)
class TopK(Strategy):
  """The k most likely tokens, renormalised."""
  k: int = 40

  def __post_init__(self):
    super().__post_init__()
    if self.k < 1:
      raise ValueError(f'top_k={self.k} must be >= 1')

  def process(self, logits_BxV):
    logits = super().process(logits_BxV)
    kth = jax.lax.top_k(logits, min(self.k, logits.shape[-1]))[0][:, -1:]
    return jnp.where(logits >= kth, logits, NEG_INF)


@dataclasses.dataclass(frozen=True)
class TopP(Strategy):
  """Nucleus sampling: the smallest set of most likely tokens whose mass reaches p."""
  p: float = 0.9

  def __post_init__(self):
    super().__post_init__()
    if not 0 < self.p <= 1:
      raise ValueError(f'top_p={self.p} must be in (0, 1]')

  def process(self, logits_BxV):
    logits = super().process(logits_BxV)
    sorted_desc = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens.
    keep = mass_before < self.p
    threshold = jnp.min(jnp.where(keep, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits >= threshold, logits, NEG_INF)


@dataclasses.dataclass(frozen=True)
class MinP(Strategy):
  """Keeps tokens with probability >= p * (probability of the most likely token)."""
  p: float = 0.1

  def __post_init__(self):
    super().__post_init__()
    if not 0 <= self.p <= 1:
      raise ValueError(f'min_p={self.p} must be in [0, 1]')

  def process(self, logits_BxV):
    logits = super().process(logits_BxV)
    cutoff = jnp.max(logits, axis=-1, keepdims=True) + jnp.log(jnp.maximum(self.p, 1e-30))
    return jnp.where(logits >= cutoff, logits, NEG_INF)

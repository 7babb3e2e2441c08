"""A learned reward model: the transformer backbone with a scalar head, trained on preferences.

r(x, y) = w · h_last, where h_last is the final (normed) hidden state at the last real token of
bos + prompt + completion + eos, and w is `head_D`. Trained with the Bradley–Terry loss on
(chosen, rejected) pairs (survey §4, model-based reward). BT sees only reward differences, so
the head has no bias: rewards are logits on an arbitrary offset (normalise them per group, as
GRPO does, before mixing with other rewards).

Like `transformer.py`, callers hold a static `RewardModelDef` and a pure param dict, and call the
pure `rewards` inside their own jit. The backbone parameters are named as the LM's
(`embed_VxD`, `blocks`, `final_norm`), so `init_from_lm` can start from an SFT policy, as
Ouyang et al. 2022 do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from si_jax.models.transformer import (Transformer, TransformerConfig, _param,
                                       causal_segment_mask, logical_axes)
from si_jax.layout import bucket
from si_jax.tokenizers import Tokenizer

BACKBONE = ('embed_VxD', 'blocks', 'final_norm')  # Param names shared with the LM.


class RewardModel(Transformer):
  """The LM's backbone (embedding, blocks, final norm) with a linear head instead of the
  unembedding; parameter names match the LM's, so an SFT policy can initialise it."""

  def __init__(self, cfg: TransformerConfig, rngs: nnx.Rngs):
    super().__init__(dataclasses.replace(cfg, tie_embeddings=True), rngs)  # no unembedding
    # Zero init: every reward starts at 0, the BT loss at log 2.
    self.head_D = _param(rngs, nnx.initializers.zeros, (cfg.d_model,), ('embed',),
                         cfg.jnp_param_dtype)

  def __call__(self, tokens_BxT, mask_BxT):
    """Rewards [B] float32 of right-padded sequences: the head on the last real token."""
    b, t = tokens_BxT.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    x, _ = self.hidden(tokens_BxT, positions, causal_segment_mask(mask_BxT.astype(jnp.int32)))
    last_B = jnp.maximum(mask_BxT.astype(jnp.int32).sum(axis=1) - 1, 0)
    h_BxD = jnp.take_along_axis(x, last_B[:, None, None], axis=1)[:, 0]
    return jnp.einsum('BD,D->B', h_BxD, self.head_D[...].astype(self.cfg.jnp_dtype),
                      preferred_element_type=jnp.float32)


@dataclasses.dataclass(frozen=True)
class RewardModelDef:
  """The static half of a split reward model (config + graphdef). Hashable, so jit can close
  over it; never equal to the LM's `Model` of the same config."""
  cfg: TransformerConfig
  graphdef: Any

  def __hash__(self):
    return hash(('reward_model', self.cfg))

  def __eq__(self, other):
    return isinstance(other, RewardModelDef) and self.cfg == other.cfg


def build_reward_model(cfg: TransformerConfig, rng: jax.Array) -> tuple[RewardModelDef, dict]:
  """Builds the reward model: (static RewardModelDef, pure param dict). Jit-compatible in rng."""
  graphdef, state = nnx.split(RewardModel(cfg, nnx.Rngs(params=rng)))
  return RewardModelDef(cfg, graphdef), nnx.to_pure_dict(state)


def logical_axes_rm(cfg: TransformerConfig) -> dict:
  """Logical axis names of every reward-model parameter (for si_jax.sharding)."""
  return logical_axes(cfg, RewardModel)


def init_from_lm(rm_params: dict, lm_params: dict) -> dict:
  """The reward model's params with the backbone copied from an LM of the same config."""
  return {**rm_params, **{k: lm_params[k] for k in BACKBONE}}


def rewards(rm: RewardModelDef, params, tokens_BxT, mask_BxT):
  """r [B] float32 of right-padded token sequences: the head on the hidden state at index
  sum(mask) - 1. Pure and differentiable."""
  return nnx.merge(rm.graphdef, params)(tokens_BxT, mask_BxT)


def bradley_terry_loss(rm: RewardModelDef, params, batch):
  """Pairs in the shared (loss_sum, (weight, metrics)) form: weight = number of pairs.

  Bradley & Terry 1952; Ouyang et al. 2022, Eq. 1:  p(y_w ≻ y_l | x) = σ(r_w - r_l),
    L = -log σ(r_w - r_l)  per pair, with r_w / r_l the rewards of chosen / rejected.
  batch: chosen_tokens / chosen_mask and rejected_tokens / rejected_mask [B, T], each row
  bos + prompt + completion + eos, right-padded. Both halves go through one forward.
  """
  b = batch['chosen_tokens'].shape[0]
  tokens = jnp.concatenate([batch['chosen_tokens'], batch['rejected_tokens']], axis=0)
  mask = jnp.concatenate([batch['chosen_mask'], batch['rejected_mask']], axis=0)
  r = rewards(rm, params, tokens, mask)
  r_w, r_l = r[:b], r[b:]
  losses = -jax.nn.log_sigmoid(r_w - r_l)
  margin = jax.lax.stop_gradient(r_w - r_l)
  return losses.sum(), (jnp.float32(b), {
      'accuracy': (margin > 0).astype(jnp.float32).sum(), 'margin': margin.sum(),
      'chosen_reward': jax.lax.stop_gradient(r_w).sum(),
      'rejected_reward': jax.lax.stop_gradient(r_l).sum()})


score_rewards = jax.jit(rewards, static_argnums=0)


def right_pad(sequences: Sequence[Sequence[int]], length: int, pad_id: int = 0):
  """[B, length] right-padded tokens and their mask."""
  tokens = np.full((len(sequences), length), pad_id, np.int32)
  mask = np.zeros((len(sequences), length), bool)
  for i, s in enumerate(sequences):
    tokens[i, :len(s)], mask[i, :len(s)] = s, True
  return tokens, mask


@dataclasses.dataclass
class LearnedReward:
  """A reward callable `fn(prompts, completions, **fields) -> [B] float32` scored by the RM.

  Sequences longer than `seq_len` (the RM's training length) keep their first seq_len - 1
  tokens plus eos, so an overlong completion is judged rather than crashing the loop. Assign
  `params` to swap in a retrained reward model.
  """
  rm: RewardModelDef
  params: Any
  tokenizer: Tokenizer
  seq_len: int

  def __post_init__(self):
    self.tokenizer.check_model_vocab(self.rm.cfg.vocab_size)
    if self.seq_len < 2:
      raise ValueError(f'reward model seq_len={self.seq_len} must fit bos and eos')

  def __call__(self, prompts: list[str], completions: list[str], **fields) -> np.ndarray:
    del fields
    if len(prompts) != len(completions) or not prompts:
      raise ValueError(f'reward model: need as many prompts ({len(prompts)}) as completions '
                       f'({len(completions)}), at least one')
    tok = self.tokenizer
    ids = [s[:self.seq_len - 1] + [tok.eos_id] for s in
           tok.encode_batch([p + c for p, c in zip(prompts, completions)], bos=True)]
    b = len(ids)
    ids += [[tok.bos_id, tok.eos_id]] * (bucket(b, minimum=1) - b)  # Bucket the batch too.
    length = min(bucket(max(len(s) for s in ids)), self.seq_len)
    tokens, mask = right_pad(ids, length)
    return np.asarray(score_rewards(self.rm, self.params, tokens, mask), np.float32)[:b]


def reward_model_reward(rm: RewardModelDef, params, tokenizer: Tokenizer,
                        seq_len: int) -> LearnedReward:
  """The learned reward as a reward callable; update its `params` attribute after retraining."""
  return LearnedReward(rm, params, tokenizer, seq_len)

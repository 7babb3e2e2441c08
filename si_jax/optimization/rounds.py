"""Pieces shared by the round-based GRO paradigms (rejection sampling, self-rewarding, SPIN).

Each paradigm is a loop over rounds: generate -> reward -> build a dataset -> a few update steps.
The update steps come from here: SFT on (prompt, completion) examples, or a preference loss on
(prompt, chosen, rejected) pairs with a frozen reference scored once per round.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from si_jax import layout, metrics, sampling, sharding
from si_jax.evaluation import accuracy
from si_jax.experiment import Experiment, load_params
from si_jax.optimization import preference, sft, train_step


def sft_step(exp: Experiment, tx=None, schedule=None):
  """The jitted SFT update of exp's model (with exp's optimizer unless another is given)."""
  return train_step.jit_train_step(train_step.make_train_step(
      functools.partial(sft.sft_loss, exp.model), tx or exp.tx, schedule or exp.schedule,
      exp.config.optimizer.grad_accum_steps), exp.shardings, exp.mesh)


def preference_step(exp: Experiment, cfg: preference.PreferenceConfig):
  return train_step.jit_train_step(train_step.make_train_step(
      functools.partial(preference.preference_loss, exp.model, cfg=cfg), exp.tx, exp.schedule,
      exp.config.optimizer.grad_accum_steps), exp.shardings, exp.mesh)


def _batches(n: int, batch_size: int, num_steps: int, seed: int, max_epochs: float):
  """Index batches cycling over n examples in a fresh seeded order each pass, stopping after
  max_epochs passes however many steps were asked for: a round with a handful of examples must
  not repeat them for dozens of steps (it overfits and wrecks the model)."""
  num_steps = min(num_steps, max(1, int(np.ceil(n * max_epochs / batch_size))))
  rng = np.random.default_rng(seed)
  order = np.array([], np.int64)
  for _ in range(num_steps):
    while len(order) < batch_size:
      order = np.concatenate([order, rng.permutation(n)])
    yield order[:batch_size]
    order = order[batch_size:]


def train_sft(exp: Experiment, step_fn, state, prompts: list[str], completions: list[str], *,
              num_steps: int, batch_size: int, seed: int, max_epochs: float):
  """num_steps SFT updates of `state` (donated) on the examples: (new state, last metrics)."""
  last = {}
  for idx in _batches(len(prompts), batch_size, num_steps, seed, max_epochs):
    batch = layout.sft_rows(exp.tokenizer, [prompts[i] for i in idx],
                            [completions[i] for i in idx], exp.config.data.seq_len)
    state, last = step_fn(state, sharding.shard_batch(batch, exp.mesh))
  return state, (metrics.to_python(last) if last else {})


def pair_arrays(tokenizer, prompts, chosen, rejected, width: int) -> dict[str, np.ndarray]:
  """The preference batch: prompts left-padded, chosen / rejected (+ eos) padded or cut to width."""
  prompt, prompt_mask = layout.encode_prompts(tokenizer, prompts)
  out = {'prompt': prompt, 'prompt_mask': prompt_mask}
  for name, texts in (('chosen', chosen), ('rejected', rejected)):
    out[f'{name}_completion'], out[f'{name}_mask'] = layout.right_pad(
        tokenizer.encode_batch(list(texts), eos=True), width)
  return out


def train_preference(exp: Experiment, step_fn, state, cfg: preference.PreferenceConfig,
                     ref_params, prompts, chosen, rejected, *, width: int, num_steps: int,
                     batch_size: int, seed: int, max_epochs: float):
  """Preference updates of `state` (donated) on the pairs: (new state, last metrics). The
  reference is scored once, before the first step.

  width: completion tokens kept (eos included); pairs are padded or cut to it.
  """
  arrays = pair_arrays(exp.tokenizer, prompts, chosen, rejected, width)
  if cfg.needs_reference:
    score = functools.partial(sampling.score_tokens, exp.model, ref_params, arrays['prompt'],
                              arrays['prompt_mask'])
    for name in ('chosen', 'rejected'):
      logp, _ = score(arrays[f'{name}_completion'], arrays[f'{name}_mask'])
      arrays[f'ref_{name}'] = np.asarray(logp).sum(axis=1)
  last = {}
  for idx in _batches(len(prompts), batch_size, num_steps, seed, max_epochs):
    batch = {k: v[idx] for k, v in arrays.items()}
    state, last = step_fn(state, sharding.shard_batch(batch, exp.mesh))
  return state, (metrics.to_python(last) if last else {})


class RoundTracker:
  """Held-out accuracy before the first round and after each, logged and checkpointed by round.

  The same held-out problems ([seed, 1]) every round, so rounds compare; checkpoints are indexed
  by round because a round may apply no update (nothing accepted) and steps would not move.
  """

  def __init__(self, exp: Experiment, params, max_new_tokens: int):
    """params: the model the rounds start from (measured as round 0 on a fresh run)."""
    self.exp, self.max_new_tokens = exp, max_new_tokens
    self.problems = exp.task.sample([exp.config.seed, 1],
                                    exp.config.train.eval_size)
    self.start = exp.meta.get('round', 0) if exp.resumed else 0
    self.result = {}
    if self.start == 0:
      self.result['round_0_accuracy'] = self.accuracy(params)

  def accuracy(self, params) -> float:
    exp = self.exp
    return accuracy.greedy_accuracy(exp.model, params, exp.tokenizer, exp.task, self.problems,
                                    self.max_new_tokens)[0]

  def end_round(self, r: int, state, logged: dict, summary: str = '') -> dict:
    """Measures and logs round r's model, and checkpoints `state` as round r + 1."""
    logged['eval_accuracy'] = self.result[f'round_{r + 1}_accuracy'] = self.accuracy(state.params)
    self.exp.writer.write(r + 1, logged)
    print(f"round {r + 1}: {summary}held-out greedy accuracy {logged['eval_accuracy']:.1%}")
    self.exp.save(r + 1, state, round=r + 1)
    return self.result


def frozen_copy(params):
  """A copy of the params that later donated updates cannot overwrite (the round's reference)."""
  return jax.tree.map(lambda x: x.copy(), params)


def base_params(exp: Experiment, state):
  """The params the rounds started from: the warm start's (config.init_from) when resumed, so a
  restarted run restarts rounds from the same base; else a frozen copy of `state`'s."""
  init_from = exp.config.init_from
  if exp.resumed and init_from:
    return load_params(init_from, exp.model.cfg, exp.shardings.params)
  if exp.resumed:
    raise ValueError('restarting rounds from the base needs config.init_from on resume: the '
                     'resumed state is a later round, not the base')
  return frozen_copy(state.params)


def restarter(exp: Experiment):
  """`restart(state, params) -> state`: a fresh fine-tuning run of `params` in place of `state`
  (donated) — a copy of them, a new optimizer state (Adam moments at zero) and step 0, so the
  schedule's warmup starts over.
  ReST-EM's M-step (Singh et al. 2023, §3) and STaR's outer loop fine-tune the base afresh.
  Compiled once; call it every round."""
  tx = exp.tx

  def fresh(state, params):
    return state.replace(step=jnp.zeros_like(state.step), params=params,
                         opt_state=tx.init(params))

  fresh = jax.jit(fresh, out_shardings=exp.shardings, donate_argnums=0)

  def restart(state, params):
    return fresh(state, frozen_copy(params))

  return restart

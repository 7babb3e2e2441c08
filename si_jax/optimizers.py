"""Optax optimizers and learning-rate schedules from the `optimizer` config section."""

from __future__ import annotations

import jax
import optax

SCHEDULES = ('cosine', 'wsd', 'constant')


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
  """Linear warmup, then cosine decay, warmup-stable-decay (WSD), or constant.

  cfg.restart_every > 0 restarts the whole shape (warmup included) every that many steps: one
  cycle per round of a self-training loop, so each round's new data gets a fresh warmup and a
  decay to its end (SGDR, Loshchilov & Hutter 2017) however many rounds came before.
  """
  if cfg.restart_every > 0:
    cycle = _schedule(cfg, cfg.restart_every)
    return lambda step: cycle(step % cfg.restart_every)
  return _schedule(cfg, total_steps)


def _schedule(cfg, total_steps: int) -> optax.Schedule:
  peak, warmup = cfg.learning_rate, min(cfg.warmup_steps, total_steps)
  end = peak * cfg.end_lr_fraction
  if cfg.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end)
  if cfg.schedule == 'wsd':  # Hold the peak, then decay linearly over the last decay_fraction.
    decay = max(1, int(total_steps * cfg.decay_fraction))
    stable = max(0, total_steps - warmup - decay)
    return optax.join_schedules([
        optax.linear_schedule(0.0, peak, warmup),
        optax.constant_schedule(peak),
        optax.linear_schedule(peak, end, decay),
    ], [warmup, warmup + stable])
  if cfg.schedule == 'constant':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup])
  raise ValueError(f'config.optimizer.schedule={cfg.schedule!r} is not one of {SCHEDULES}')


def _decay_mask(params):
  """Weight decay on weight matrices only: norms' scales and biases (q_bias_NxH is 2-D) are
  left alone."""
  is_bias = lambda path: 'bias' in str(getattr(path[-1], 'key', path[-1]))
  return jax.tree_util.tree_map_with_path(lambda path, p: p.ndim >= 2 and not is_bias(path),
                                          params)


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with global-norm clipping (grad_clip <= 0 turns clipping off)."""
  schedule = make_schedule(cfg, total_steps)
  parts = [optax.clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=_decay_mask))
  return optax.chain(*parts), schedule

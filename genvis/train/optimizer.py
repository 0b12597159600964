"""The optax optimizer and learning-rate schedule from `config.optim`.

AdamW with linear warmup then cosine, linear or no decay to `min_lr`; global-norm gradient
clipping (with the norm the train step has already computed); weight decay only on kernels
and embeddings, never on biases and norm scales (GPT-2/3 and nanoGPT practice). The choice is
by parameter name, not by rank: a fused QKV bias is 3-D and a scanned LayerNorm scale is 2-D,
yet neither is a weight matrix.

Layer-wise learning-rate decay (`layer_decay` < 1; BEiT, and MAE's fine-tuning): the update
of a parameter at depth i of a model whose head is at depth L is scaled by
layer_decay^(L - i), so the head moves at the full rate and the patch embedding least. The
task names the depths (`Task.lr_layers`). The scale multiplies AdamW's whole update, weight
decay included, as a per-group learning rate does in PyTorch's AdamW.
"""

from typing import Any, Callable

import jax
import numpy as np
import optax

from genvis.errors import UserError


def schedule(optim_config, total_steps: int) -> optax.Schedule:
  cfg = optim_config
  decay_steps = (cfg.decay_steps or total_steps) - cfg.warmup_steps
  warmup = optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1))
  if cfg.decay == "cosine":
    decay = optax.cosine_decay_schedule(cfg.lr, max(decay_steps, 1), alpha=cfg.min_lr / cfg.lr)
  elif cfg.decay == "linear":
    decay = optax.linear_schedule(cfg.lr, cfg.min_lr, max(decay_steps, 1))
  elif cfg.decay == "constant":
    decay = optax.constant_schedule(cfg.lr)
  else:
    raise UserError(f"config.optim.decay={cfg.decay!r}: expected cosine, linear or constant")
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


DECAYED = ("kernel", "embedding", "wpe")


def weight_decay_mask(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) in DECAYED, params)


def scale_by_layer_decay(layer_of: Callable[[tuple[str, ...]], Any], deepest: int,
                         decay: float) -> optax.GradientTransformation:
  """Multiplies each update by decay^(deepest - depth), depth = layer_of(path names); an
  array of depths scales the slices along the leading axis of stacked layers."""

  def scale(path, update):
    names = tuple(str(getattr(key, "key", key)) for key in path)
    depth = np.asarray(layer_of(names))
    if depth.ndim and depth.shape != update.shape[:1]:
      raise ValueError(f"layer depths {depth.shape} for parameter {'/'.join(names)} "
                       f"{update.shape}: one per slice of its leading axis expected")
    factor = np.power(decay, deepest - depth, dtype=np.float32).astype(update.dtype)
    return update * factor.reshape(factor.shape + (1,) * (update.ndim - factor.ndim))

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
  """`optax.clip_by_global_norm`, except that the caller may pass the norm it has computed
  already (`update(..., grad_norm=)`), which must then be that of these same updates: the
  first transform of the chain. The train step computes the norm for its finiteness check,
  and XLA cannot share one computation between that check and the update inside its
  `lax.cond`. The state is optax's (empty), so checkpoints do not change."""

  def update_fn(updates, state, params=None, *, grad_norm=None, **extra_args):
    del params, extra_args
    norm = optax.tree.norm(updates) if grad_norm is None else grad_norm
    keep = norm < max_norm
    clip = lambda t: jax.lax.select(keep, t, (t / norm.astype(t.dtype)) * max_norm)
    return jax.tree.map(clip, updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def check_adamw(cfg):
  """Refuses out-of-range settings by name. Some would make AdamW's update non-finite from
  finite gradients, which the train step's finiteness check (on the loss and gradient) would
  let through into the state and its checkpoints: eps = 0 divides 0 by 0 for a parameter that
  has had no gradient yet (an embedding row no batch has used), b1 or b2 = 1 zero the bias
  corrections' divisors. Others would be quietly replaced: a decay that ends within the
  warmup would drop to min_lr at once."""
  def bad(key, value, requirement):
    raise UserError(f"config.optim.{key}={value} must be {requirement}")
  if not (np.isfinite(cfg.lr) and cfg.lr > 0):
    bad("lr", cfg.lr, "> 0")
  if cfg.decay != "constant" and not (np.isfinite(cfg.min_lr) and 0 <= cfg.min_lr <= cfg.lr):
    bad("min_lr", cfg.min_lr, f">= 0 and <= optim.lr={cfg.lr} (the decay ends at it)")
  if not (np.isfinite(cfg.eps) and cfg.eps > 0):
    bad("eps", cfg.eps, "> 0 (Adam divides by sqrt(v) + eps)")
  for key in ("b1", "b2"):
    if not 0 <= cfg[key] < 1:
      bad(key, cfg[key], "in [0, 1)")
  if cfg.warmup_steps < 0:
    bad("warmup_steps", cfg.warmup_steps, ">= 0")
  if cfg.decay_steps and cfg.decay_steps <= cfg.warmup_steps:
    bad("decay_steps", cfg.decay_steps, f"0 (decay over train.steps) or > optim.warmup_steps="
        f"{cfg.warmup_steps} (it counts the warmup)")
  for key in ("weight_decay", "clip_norm"):
    if not (np.isfinite(cfg[key]) and cfg[key] >= 0):
      bad(key, cfg[key], ">= 0")


def make_optimizer(optim_config, total_steps: int, lr_layers=None) -> optax.GradientTransformation:
  """The optimizer `optim_config` describes; `lr_layers` is the task's (layer_of, deepest)
  for layer-wise decay (`Task.lr_layers`)."""
  cfg = optim_config
  if cfg.name != "adamw":
    raise UserError(f"config.optim.name={cfg.name!r}: only 'adamw' is implemented")
  check_adamw(cfg)
  parts = []
  if cfg.clip_norm > 0:
    parts.append(clip_by_global_norm(cfg.clip_norm))
  parts.append(optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=weight_decay_mask))
  layer_decay = cfg.get("layer_decay", 1.0)
  if not 0.0 < layer_decay <= 1.0:
    raise UserError(f"config.optim.layer_decay={layer_decay} must be in (0, 1]; 1 turns it off")
  if layer_decay < 1.0:
    if lr_layers is None:
      raise UserError(f"config.optim.layer_decay={layer_decay}: this task's model has no "
                      "layer order to decay along (set it to 1)")
    parts.append(scale_by_layer_decay(*lr_layers, layer_decay))
  return parts[0] if len(parts) == 1 else optax.chain(*parts)

"""The optax optimizer and learning-rate schedule from `config.optim`.

AdamW with linear warmup then cosine, linear or no decay to `min_lr`; global-norm gradient
clipping; weight decay only on kernels and embeddings, never on biases and norm scales (GPT-2/3
and nanoGPT practice). The choice is by parameter name, not by rank: a fused QKV bias is 3-D
and a scanned LayerNorm scale is 2-D, yet neither is a weight matrix.
"""

import jax
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


def make_optimizer(optim_config, total_steps: int) -> optax.GradientTransformation:
  cfg = optim_config
  if cfg.name != "adamw":
    raise UserError(f"config.optim.name={cfg.name!r}: only 'adamw' is implemented")
  adamw = optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=weight_decay_mask)
  if cfg.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)
  return adamw

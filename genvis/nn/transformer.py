"""Transformer blocks (pre-LN as in GPT-2, post-LN as in GPT-1) and a stack of them.

The stack can apply its layers through `nn.scan` (one compiled layer body, parameters stacked
along a leading "layers" axis: fast compiles for deep models) and `nn.remat` (recompute
activations in the backward pass to save memory), both chosen by config.

`attention_pattern` gives each layer dense or locally banded attention (GPT-3: "we use
alternating dense and locally banded sparse attention patterns in the layers of the
transformer, similar to the Sparse Transformer"). Scanned layers share one body, so when the
pattern mixes the two kinds the scan carries each layer's band width as a traced input.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.nn import partitioning as P
from genvis.nn.attention import SelfAttention
from genvis.nn.dropout import Dropout
from genvis.nn.mlp import ACTIVATIONS, Mlp

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
  """Hyper-parameters of a stack of transformer blocks."""

  num_layers: int
  d_model: int
  num_heads: int
  head_dim: int = 0  # 0: d_model // num_heads (GPT-3 13B has heads * head_dim != d_model)
  mlp_dim: int = 0  # 0: 4 * d_model
  activation: str = "gelu_tanh"  # MLP non-linearity: "gelu_tanh" (GPT-1/2), "gelu" (erf),
                                 # "quick_gelu" (ImageGPT)
  norm: str = "layer"  # "layer" (LayerNorm) or "rms" (ImageGPT's gain-only norm: x/rms(x)*g)
  dropout: float = 0.0  # on embeddings and residual branches
  attention_dropout: float = 0.0  # on attention weights
  norm_position: str = "pre"  # "pre" (GPT-2) or "post" (GPT-1)
  layer_norm_epsilon: float = 1e-5
  use_bias: bool = True  # in dense layers and LayerNorms (nanoGPT's bias=False drops them)
  causal: bool = True
  # "dense", "local", "alternating" (dense, local, dense, ... as in GPT-3) or one
  # comma-separated "dense"/"local" per layer; local layers see `local_window` positions.
  attention_pattern: str = "dense"
  local_window: int = 0
  # "": JAX's choice (written-out XLA attention on CPUs); "xla"; "cudnn" (fused flash, GPUs)
  attention_impl: str = ""
  init_std: float = 0.02
  # GPT-2's residual-projection init, init_std / sqrt(2 * num_layers); GPT-1 used init_std.
  scale_residual_init: bool = True
  scan_layers: bool = False
  remat: str = "none"  # "none", "full" or "dots"
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"

  def __post_init__(self):
    choices = {"norm_position": ("pre", "post"), "norm": ("layer", "rms"),
               "remat": ("none", *REMAT_POLICIES),
               "attention_impl": ("", "xla", "cudnn"), "activation": tuple(ACTIVATIONS)}
    for key, allowed in choices.items():
      if getattr(self, key) not in allowed:
        raise UserError(f"config.model.{key}={getattr(self, key)!r}: expected one of "
                        f"{', '.join(allowed)}")
    for name in (self.dtype, self.param_dtype):
      P.dtype(name)  # raises a UserError naming the dtype keys
    if self.num_heads < 1 or (not self.head_dim and self.d_model % self.num_heads):
      raise UserError(f"config.model.num_heads={self.num_heads} must be >= 1 and divide "
                      f"config.model.d_model={self.d_model} (or set config.model.head_dim)")
    has_local = "local" in self.layer_kinds()
    if has_local and self.local_window < 1:
      raise UserError(f"config.model.attention_pattern={self.attention_pattern!r} has local "
                      f"layers: set config.model.local_window >= 1 (now {self.local_window})")
    if not has_local and self.local_window:
      raise UserError(f"config.model.local_window={self.local_window} has no effect: "
                      f"config.model.attention_pattern={self.attention_pattern!r} has no local "
                      "layers (set the window to 0, or the pattern to local or alternating)")
    if self.attention_impl == "cudnn" and self.dtype not in ("bfloat16", "float16"):
      raise UserError(f"config.model.attention_impl='cudnn' needs config.model.dtype="
                      f"bfloat16 or float16 (cuDNN's flash attention), not {self.dtype!r}")

  def layer_windows(self) -> tuple[int, ...]:
    """Each layer's attention band width; 0 is dense attention."""
    return tuple(self.local_window if kind == "local" else 0 for kind in self.layer_kinds())

  def layer_kinds(self) -> tuple[str, ...]:
    """"dense" or "local" for each layer, from `attention_pattern`."""
    pattern, n = self.attention_pattern, self.num_layers
    if pattern in ("dense", "local"):
      kinds = [pattern] * n
    elif pattern == "alternating":
      kinds = ["dense" if i % 2 == 0 else "local" for i in range(n)]
    else:
      kinds = [kind.strip() for kind in pattern.split(",")]
      if len(kinds) != n or set(kinds) - {"dense", "local"}:
        raise UserError(f"config.model.attention_pattern={pattern!r}: expected dense, local, "
                        f"alternating or {n} comma-separated dense/local entries")
    return tuple(kinds)

  @property
  def attention_head_dim(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  @property
  def hidden_dim(self) -> int:
    return self.mlp_dim or 4 * self.d_model

  @property
  def residual_std(self) -> float:
    # GPT-2: residual projections scaled by 1/sqrt(N) with N = 2 residual adds per layer.
    if not self.scale_residual_init:
      return self.init_std
    return self.init_std / math.sqrt(2 * self.num_layers)


def norm_layer(config: TransformerConfig, name: str) -> nn.Module:
  """The config's normalisation layer. ImageGPT's "rms" divides by the root mean square
  without centring and has a gain but no bias, whatever `use_bias` says."""
  if config.norm == "rms":
    return nn.RMSNorm(
        epsilon=config.layer_norm_epsilon,
        dtype=P.dtype(config.dtype),
        param_dtype=P.dtype(config.param_dtype),
        scale_init=P.param_init(nn.initializers.ones, (P.EMBED,)),
        name=name,
    )
  return nn.LayerNorm(
      epsilon=config.layer_norm_epsilon,
      use_bias=config.use_bias,
      dtype=P.dtype(config.dtype),
      param_dtype=P.dtype(config.param_dtype),
      scale_init=P.param_init(nn.initializers.ones, (P.EMBED,)),
      bias_init=P.param_init(nn.initializers.zeros, (P.EMBED,)),
      name=name,
  )


class Block(nn.Module):
  """One transformer block. Returns (x, None) so the same module works under `nn.scan`."""

  config: TransformerConfig
  train: bool = False
  decode: bool = False
  local_window: int = 0  # this layer's static band width (0: dense)

  @nn.compact
  def __call__(self, x, window=None):
    """`window`: this layer's band width as a traced value (scanned mixed patterns)."""
    cfg = self.config
    attention = SelfAttention(
        num_heads=cfg.num_heads,
        head_dim=cfg.attention_head_dim,
        causal=cfg.causal,
        local_window=self.local_window,
        dropout_rate=cfg.attention_dropout,
        deterministic=not self.train,
        init_std=cfg.init_std,
        out_std=cfg.residual_std,
        use_bias=cfg.use_bias,
        decode=self.decode,
        implementation=cfg.attention_impl or None,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        name="attn",
    )
    mlp = Mlp(cfg.hidden_dim, cfg.init_std, cfg.residual_std, cfg.use_bias, cfg.dtype,
              cfg.param_dtype, cfg.activation, name="mlp")
    dropout = Dropout(cfg.dropout, deterministic=not self.train)
    if cfg.norm_position == "pre":
      x = x + dropout(attention(norm_layer(cfg, "ln_1")(x), window))
      x = x + dropout(mlp(norm_layer(cfg, "ln_2")(x)))
    else:
      x = norm_layer(cfg, "ln_1")(x + dropout(attention(x, window)))
      x = norm_layer(cfg, "ln_2")(x + dropout(mlp(x)))
    x = P.constrain(x, (P.BATCH, P.LENGTH, P.EMBED))
    # Probes read every layer's output; sowing is free unless "intermediates" is mutable.
    self.sow("intermediates", "output", x)
    return x, None


class TransformerStack(nn.Module):
  """`num_layers` blocks, looped or scanned, optionally rematerialised."""

  config: TransformerConfig
  train: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    block = Block
    if cfg.remat != "none":
      block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    windows = cfg.layer_windows()
    if cfg.scan_layers:
      scanned = nn.scan(
          block,
          variable_axes={"params": 0, "cache": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True},
          length=cfg.num_layers,
          metadata_params={nn.PARTITION_NAME: P.LAYERS},
      )
      if len(set(windows)) == 1:  # one pattern for all layers: static, kernel-friendly
        x, _ = scanned(cfg, self.train, self.decode, windows[0], name="layers")(x, None)
      else:
        x, _ = scanned(cfg, self.train, self.decode, name="layers")(x, jnp.array(windows))
      return x
    for i in range(cfg.num_layers):
      x, _ = block(cfg, self.train, self.decode, windows[i], name=f"layer_{i}")(x)
    return x


def stack_flops(config: TransformerConfig, tokens: int) -> float:
  """Forward FLOPs of `config`'s block stack on `tokens` tokens: the matmuls (qkv, out, fc,
  proj) and the attention scores and values over all of them (dense); norms and biases left
  out."""
  d, d_attention = config.d_model, config.num_heads * config.attention_head_dim
  weights = 4 * d * d_attention + 2 * d * config.hidden_dim
  return config.num_layers * (2 * weights * tokens + 4 * d_attention * tokens * tokens)

"""GPT: a decoder-only transformer (GPT-1, GPT-2, the GPT-3 sizes, ImageGPT).

tokens -> token embedding + learned position embedding -> dropout -> N blocks (pre-LN as in
GPT-2, or post-LN as in GPT-1) -> final LayerNorm (GPT-2/3) -> logits through the token
embedding (tied) or a separate head.

`VARIANTS` names the published sizes; `config_for(name)` gives every field of one, which a
config file may then override. CPU sizes "tiny" and "small" are nanoGPT's CPU and "baby GPT"
Shakespeare settings; their vocabulary comes from the tokenizer (vocab_size=0).

ImageGPT (Chen et al. 2020) is GPT-2 over pixel tokens with three differences, all config
fields: a gain-only RMS norm (`norm="rms"`), the sigmoid GELU (`activation="quick_gelu"`)
and an untied head, zero-initialised, that predicts only the palette's colours
(`output_vocab_size`: the learned start-of-image token is an input, never a target).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.nn import float32_logits
from genvis.nn import partitioning as P
from genvis.nn.dropout import Dropout
from genvis.nn.token_embedding import TokenEmbed
from genvis.nn.transformer import TransformerConfig, TransformerStack, norm_layer


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTConfig(TransformerConfig):
  vocab_size: int  # 0: taken from the tokenizer
  max_len: int = 1024  # context length (learned position embeddings)
  final_norm: bool = True  # GPT-1 (post-LN) has none
  tie_embeddings: bool = True
  output_vocab_size: int = 0  # untied head's outputs; 0: vocab_size
  zero_init_head: bool = False  # ImageGPT zero-initialises the projection to logits

  def __post_init__(self):
    super().__post_init__()
    if self.output_vocab_size < 0:
      raise UserError(f"config.model.output_vocab_size={self.output_vocab_size} must be >= 0 "
                      "(0: vocab_size)")
    if self.tie_embeddings and self.zero_init_head:
      raise UserError("config.model.zero_init_head=True needs config.model.tie_embeddings="
                      "False (a tied head is the token embedding)")
    if self.tie_embeddings and self.output_vocab_size not in (0, self.vocab_size):
      raise UserError(f"config.model.output_vocab_size={self.output_vocab_size} needs "
                      f"config.model.tie_embeddings=False (a tied head has vocab_size="
                      f"{self.vocab_size} outputs)")
    if self.output_vocab_size > self.vocab_size:
      raise UserError(f"config.model.output_vocab_size={self.output_vocab_size} > "
                      f"vocab_size={self.vocab_size}")

  @property
  def num_outputs(self) -> int:
    return self.output_vocab_size or self.vocab_size


_GPT2 = dict(max_len=1024, vocab_size=50257)
_GPT3 = dict(max_len=2048, vocab_size=50257)
# ImageGPT: 512 palette colours + the start-of-image token in; the 512 colours out.
_IGPT = dict(vocab_size=513, output_vocab_size=512, tie_embeddings=False, zero_init_head=True,
             norm="rms", activation="quick_gelu")

# layers, width, heads (and head width where heads * head_dim != width) from the papers.
VARIANTS = {
    "tiny": dict(num_layers=4, d_model=128, num_heads=4, max_len=64, vocab_size=0,
                 use_bias=False),
    "small": dict(num_layers=6, d_model=384, num_heads=6, max_len=256, vocab_size=0,
                  use_bias=False),
    # Radford et al. 2018, section 4.1: N(0, 0.02) for every weight, residual ones too.
    "gpt1": dict(num_layers=12, d_model=768, num_heads=12, max_len=512, vocab_size=40478,
                 norm_position="post", final_norm=False, scale_residual_init=False),
    "gpt2": dict(num_layers=12, d_model=768, num_heads=12, **_GPT2),
    "gpt2-medium": dict(num_layers=24, d_model=1024, num_heads=16, **_GPT2),
    "gpt2-large": dict(num_layers=36, d_model=1280, num_heads=20, **_GPT2),
    "gpt2-xl": dict(num_layers=48, d_model=1600, num_heads=25, **_GPT2),
    # Brown et al. 2020, Table 2.1. Its XL row (24 heads x 128 = 3072 != 2048) contradicts
    # its own 1.3B total, which needs heads x head_dim = 2048: we use 16 x 128 (as Megatron
    # does). Its 13B row keeps 40 x 128 = 5120 next to d_model = 5140, as printed.
    "gpt3-small": dict(num_layers=12, d_model=768, num_heads=12, head_dim=64, **_GPT3),
    "gpt3-medium": dict(num_layers=24, d_model=1024, num_heads=16, head_dim=64, **_GPT3),
    "gpt3-large": dict(num_layers=24, d_model=1536, num_heads=16, head_dim=96, **_GPT3),
    "gpt3-xl": dict(num_layers=24, d_model=2048, num_heads=16, head_dim=128, **_GPT3),
    "gpt3-2.7b": dict(num_layers=32, d_model=2560, num_heads=32, head_dim=80, **_GPT3),
    "gpt3-6.7b": dict(num_layers=32, d_model=4096, num_heads=32, head_dim=128, **_GPT3),
    "gpt3-13b": dict(num_layers=40, d_model=5140, num_heads=40, head_dim=128, **_GPT3),
    "gpt3-175b": dict(num_layers=96, d_model=12288, num_heads=96, head_dim=128, **_GPT3),
    # Chen et al. 2020, section 3.3 and table 1: 76M, 455M, 1362M and 6801M parameters. S, M
    # and L read 32x32 images (1024 tokens), XL 64x64 (4096). The paper gives no head counts:
    # S, M and L use those of OpenAI's released checkpoints (8, 8, 16), XL 24 (width 128).
    "igpt-s": dict(num_layers=24, d_model=512, num_heads=8, max_len=1024, **_IGPT),
    "igpt-m": dict(num_layers=36, d_model=1024, num_heads=8, max_len=1024, **_IGPT),
    "igpt-l": dict(num_layers=48, d_model=1536, num_heads=16, max_len=1024, **_IGPT),
    "igpt-xl": dict(num_layers=60, d_model=3072, num_heads=24, max_len=4096, **_IGPT),
}


def default_fields() -> dict:
  """GPTConfig's fields that have defaults, with them."""
  return {f.name: f.default for f in dataclasses.fields(GPTConfig)
          if f.default is not dataclasses.MISSING}


def config_for(variant: str, **overrides) -> dict:
  """Every GPTConfig field for a named variant, as a plain dict (for config files)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown GPT variant {variant!r}; known: {', '.join(VARIANTS)}")
  return {**default_fields(), **VARIANTS[variant], **overrides}


class GPT(nn.Module):
  """Decoder-only transformer. `decode=True` runs incrementally against a KV cache."""

  config: GPTConfig

  @nn.compact
  def __call__(self, tokens, *, train: bool = False, decode: bool = False,
               return_hidden: bool = False):
    """Logits [B, T, vocab]; with `return_hidden`, (logits, final hidden states [B, T, D]),
    the features a task head (GPT-1 fine-tuning) reads."""
    cfg = self.config
    if tokens.shape[1] > cfg.max_len:
      raise ValueError(f"sequence length {tokens.shape[1]} > model.max_len={cfg.max_len}")
    dtype, param_dtype = P.dtype(cfg.dtype), P.dtype(cfg.param_dtype)
    wte = TokenEmbed(cfg.vocab_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype,
                     embedding_init=P.param_init(nn.initializers.normal(cfg.init_std),
                                                 (P.VOCAB, P.EMBED)),
                     name="wte")
    wpe = self.param("wpe", P.param_init(nn.initializers.normal(cfg.init_std), (None, P.EMBED)),
                     (cfg.max_len, cfg.d_model), param_dtype)

    x = wte(tokens) + jnp.take(wpe, self._positions(tokens, decode), axis=0).astype(dtype)
    x = Dropout(cfg.dropout, deterministic=not train)(x)
    x = P.constrain(x, (P.BATCH, P.LENGTH, P.EMBED))
    x = TransformerStack(cfg, train, decode, name="blocks")(x)
    if cfg.final_norm:
      x = norm_layer(cfg, "ln_f")(x)
    if cfg.tie_embeddings:
      logits = wte.attend(x)
    else:
      head_init = (nn.initializers.zeros if cfg.zero_init_head
                   else nn.initializers.normal(cfg.init_std))
      logits = nn.Dense(cfg.num_outputs, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                        kernel_init=P.param_init(head_init, (P.EMBED, P.VOCAB)),
                        dot_general=float32_logits.dot_general, name="head")(x)
    # Both heads give float32 logits that were never rounded to the compute dtype.
    logits = P.constrain(logits.astype(jnp.float32), (P.BATCH, P.LENGTH, P.VOCAB))
    return (logits, x) if return_hidden else logits

  def _positions(self, tokens, decode: bool):
    positions = jnp.arange(tokens.shape[1])
    if not decode:
      return positions
    initialised = self.has_variable("cache", "position_index")
    # Per row, so rows of a batch may sit at different positions (prompts of any length).
    index = self.variable("cache", "position_index", jnp.zeros, tokens.shape[:1], jnp.int32)
    if not initialised:
      return positions
    start = index.value
    index.value = start + tokens.shape[1]
    return start[:, None] + positions


def flops_per_token(config: GPTConfig, num_params: int, seq_len: int) -> float:
  """Training FLOPs per token: 6N for the matmuls with parameters (forward + backward)
  plus 12·L·d·T for attention scores and values (Kaplan et al. 2020; PaLM appendix B).

  N excludes the position embedding, which is a lookup, not a matmul. A locally banded layer
  (GPT-3's sparse layers) attends to at most `local_window` keys instead of T.
  """
  n = num_params - config.max_len * config.d_model
  d_attention = config.num_heads * config.attention_head_dim
  keys_per_layer = sum(min(window, seq_len) if window else seq_len
                       for window in config.layer_windows())
  return 6 * n + 12 * d_attention * keys_per_layer


def abstract_params(config: GPTConfig):
  """Parameter shapes (no memory allocated), with logical-axis boxes removed."""
  model = GPT(config)
  tokens = jax.ShapeDtypeStruct((1, min(8, config.max_len)), jnp.int32)
  variables = jax.eval_shape(lambda t: model.init(jax.random.key(0), t), tokens)
  return nn.meta.unbox(variables["params"])


def layer_outputs(model: GPT, params, tokens) -> jax.Array:
  """The residual stream after each block, [num_layers, B, T, D] (what probes read)."""
  _, state = model.apply({"params": params}, tokens, mutable=["intermediates"])
  blocks = state["intermediates"]["blocks"]
  if model.config.scan_layers:
    return blocks["layers"]["output"][0]
  return jnp.stack([blocks[f"layer_{i}"]["output"][0]
                    for i in range(model.config.num_layers)])


def count_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))

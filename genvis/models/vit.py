"""ViT: the Vision Transformer (Dosovitskiy et al. 2020), with DeiT's Ti and S sizes.

images [B, S, S, C] -> patches (genvis.nn.patches) -> Dense to d_model (the stride-p
convolution of the paper, as a matmul) + position embeddings -> [class token] -> dropout ->
pre-LN bidirectional blocks -> final LayerNorm -> pool ("cls": the class token; "mean": the
average of the patch tokens) -> [pre-logits Dense + tanh] -> zero-initialised head.

The model is split into methods so MAE can reuse it on a subset of patches:

    tokens = vit.embed_patches(images)           # [B, N, D], positions already added
    tokens = tokens[:, visible]                  # MAE keeps 25 % of them
    tokens = vit.prepend_class_token(tokens)     # [B, 1 + n, D] (no-op without one)
    encoded = vit.encode(tokens, train=train)    # [B, 1 + n, D], blocks + final norm
    pooled = vit.pool(encoded)                   # [B, D]

Called from a parent module (`self.encoder.embed_patches(...)`) or through
`model.apply(variables, x, method="encode")`. An MAE encoder built as a ViT submodule thus
has exactly a ViT's parameter tree, which fine-tuning and probes load as they are.

Parameters: patch_embed/{kernel [p*p*C, D], bias [D] (unless patch_bias=False)},
cls_token [1, 1, D], pos_embedding [(1 +) N, D] (learned only; "sincos" is a constant),
encoder/{[ln_pre], blocks/... (as GPT's, genvis/nn/transformer.py), ln_f},
pre_logits/{kernel, bias} (representation_size > 0), head/{kernel, bias} (num_classes > 0).

Defaults follow the reference implementations (google-research/vision_transformer, timm,
MAE): LayerNorm epsilon 1e-6 and the exact (erf) GELU of timm and Hugging Face. The original
JAX ViT called flax's `nn.gelu`, whose default is the tanh approximation: set
`activation="gelu_tanh"` to reproduce it. The blocks use genvis's GPT-style initialisation
(normal 0.02, residual projections scaled by 1/sqrt(2L)), not the references' Xavier-uniform.
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.models.gpt import count_params  # noqa: F401  (re-exported: same for every model)
from genvis.nn import partitioning as P
from genvis.nn.dropout import Dropout
from genvis.nn.embeddings import sincos_2d
from genvis.nn.patches import grid_size, patchify
from genvis.nn.transformer import TransformerConfig, TransformerStack, norm_layer, stack_flops


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig(TransformerConfig):
  """TransformerConfig plus the image side; attention is always bidirectional."""

  image_size: int = 224  # square images of image_size x image_size pixels
  patch_size: int = 16
  channels: int = 3
  num_classes: int = 0  # 0: no head, the model returns the pooled representation
  pos_embedding: str = "learned"  # "learned" (ViT; normal(0.02) init) or "sincos" (MAE)
  pooling: str = "cls"  # "cls" (the class token) or "mean" (average of the patch tokens)
  class_token: bool = True
  representation_size: int = 0  # > 0: ViT's pre-logits Dense + tanh (ImageNet-21k)
  # CLIP's image encoder: a LayerNorm on the embedded tokens before the blocks (encoder/ln_pre)
  # and a patch projection without bias. The defaults keep ViT's and MAE's parameter trees.
  pre_norm: bool = False
  patch_bias: bool = True
  # TransformerConfig fields whose ViT defaults differ from GPT's.
  activation: str = "gelu"
  layer_norm_epsilon: float = 1e-6
  causal: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.causal:
      raise UserError("config.model.causal=True: ViT attention is bidirectional, set False")
    choices = {"pos_embedding": ("learned", "sincos"), "pooling": ("cls", "mean")}
    for key, allowed in choices.items():
      if getattr(self, key) not in allowed:
        raise UserError(f"config.model.{key}={getattr(self, key)!r}: expected one of "
                        f"{', '.join(allowed)}")
    if self.pooling == "cls" and not self.class_token:
      raise UserError("config.model.pooling='cls' needs config.model.class_token=True "
                      "(or use pooling='mean')")
    for key in ("channels", "num_classes", "representation_size"):
      if getattr(self, key) < (1 if key == "channels" else 0):
        raise UserError(f"config.model.{key}={getattr(self, key)} is out of range")
    grid_size(self.image_size, self.patch_size)  # a UserError unless patches tile the image
    if self.pos_embedding == "sincos":
      sincos_2d(1, 1, self.d_model)  # a UserError unless d_model % 4 == 0

  @property
  def grid(self) -> int:
    """Patches per side."""
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid

  @property
  def num_tokens(self) -> int:
    """Sequence length through the blocks for a whole image."""
    return self.num_patches + int(self.class_token)


# Width, depth, heads: ViT paper table 1 (B, L, H) and DeiT table 1 (Ti, S); MLP 4x width.
VARIANTS = {
    "Ti": dict(d_model=192, num_layers=12, num_heads=3),
    "S": dict(d_model=384, num_layers=12, num_heads=6),
    "B": dict(d_model=768, num_layers=12, num_heads=12),
    "L": dict(d_model=1024, num_layers=24, num_heads=16),
    "H": dict(d_model=1280, num_layers=32, num_heads=16),
}
_VARIANT_NAME = re.compile(r"^(?:vit-)?(\w+)/(\d+)$")


def default_fields() -> dict:
  """ViTConfig's fields that have defaults, with them."""
  return {f.name: f.default for f in dataclasses.fields(ViTConfig)
          if f.default is not dataclasses.MISSING}


def config_for(variant: str, **overrides) -> dict:
  """Every ViTConfig field for a name such as "B/16" (size/patch size), as a plain dict."""
  match = _VARIANT_NAME.match(variant)
  if not match or match.group(1) not in VARIANTS:
    raise UserError(f"unknown ViT variant {variant!r}: expected SIZE/PATCH with SIZE one of "
                    f"{', '.join(VARIANTS)}, e.g. 'B/16'")
  size, patch = match.groups()
  return {**default_fields(), **VARIANTS[size], "patch_size": int(patch), **overrides}


class Encoder(nn.Module):
  """[pre-norm ->] dropout -> blocks -> final norm; `train` is a call argument (the stack's
  is a field)."""

  config: ViTConfig

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    cfg = self.config
    if cfg.pre_norm:
      tokens = norm_layer(cfg, "ln_pre")(tokens)
    x = Dropout(cfg.dropout)(tokens, deterministic=not train)
    x = P.constrain(x, (P.BATCH, P.LENGTH, P.EMBED))
    x = TransformerStack(cfg, train, name="blocks")(x)
    return norm_layer(cfg, "ln_f")(x)


class ViT(nn.Module):
  """Vision Transformer; see the module docstring for the methods MAE reuses."""

  config: ViTConfig

  def setup(self):
    cfg = self.config
    dtype, param_dtype = P.dtype(cfg.dtype), P.dtype(cfg.param_dtype)
    # LeCun normal is the default init of the reference's patch convolution.
    self.patch_embed = nn.Dense(
        cfg.d_model, use_bias=cfg.patch_bias, dtype=dtype, param_dtype=param_dtype,
        kernel_init=P.param_init(nn.initializers.lecun_normal(), (None, P.EMBED)),
        bias_init=P.param_init(nn.initializers.zeros, (P.EMBED,)))
    if cfg.class_token:
      self.cls_token = self.param("cls_token", P.param_init(nn.initializers.zeros,
                                                            (None, None, P.EMBED)),
                                  (1, 1, cfg.d_model), param_dtype)
    if cfg.pos_embedding == "learned":
      self.pos_embedding = self.param(
          "pos_embedding", P.param_init(nn.initializers.normal(0.02), (None, P.EMBED)),
          (cfg.num_tokens, cfg.d_model), param_dtype)
    self.encoder = Encoder(cfg)
    if cfg.representation_size:
      self.pre_logits = nn.Dense(
          cfg.representation_size, dtype=dtype, param_dtype=param_dtype,
          kernel_init=P.param_init(nn.initializers.lecun_normal(), (P.EMBED, None)),
          bias_init=P.param_init(nn.initializers.zeros, (None,)))
    if cfg.num_classes:
      # Zero-initialised, as ViT fine-tuning does: every class starts equally likely.
      self.head = nn.Dense(
          cfg.num_classes, dtype=dtype, param_dtype=param_dtype,
          kernel_init=P.param_init(nn.initializers.zeros,
                                   (None if cfg.representation_size else P.EMBED, None)),
          bias_init=P.param_init(nn.initializers.zeros, (None,)))

  def __call__(self, images, *, train: bool = False, return_features: bool = False):
    """Logits [B, num_classes] in float32 (with `return_features`: and the pooled
    representation); without a head, the pooled representation [B, D]."""
    features = self.pool(self.encode_images(images, train=train))
    if self.config.representation_size:
      features = jnp.tanh(self.pre_logits(features))
    if not self.config.num_classes:
      return features
    logits = self.head(features).astype(jnp.float32)
    return (logits, features) if return_features else logits

  def encode_images(self, images, *, train: bool = False):
    """Every token of whole images after the final norm, [B, num_tokens, D]."""
    return self.encode(self.prepend_class_token(self.embed_patches(images)), train=train)

  def embed_patches(self, images):
    """[B, S, S, C] -> patch embeddings plus their position embeddings, [B, N, D]."""
    cfg = self.config
    expected = (cfg.image_size, cfg.image_size, cfg.channels)
    if tuple(images.shape[1:]) != expected:
      raise UserError(f"images of shape {tuple(images.shape)} (B, H, W, C): the model "
                      f"expects (B, {', '.join(map(str, expected))}) from config.model."
                      "image_size and config.model.channels")
    dtype = P.dtype(cfg.dtype)
    x = self.patch_embed(patchify(images.astype(dtype), cfg.patch_size))
    x = x + self.positions()[-cfg.num_patches:].astype(dtype)
    return P.constrain(x, (P.BATCH, P.LENGTH, P.EMBED))

  def prepend_class_token(self, tokens):
    """[B, n, D] -> [B, 1 + n, D]: the class token (plus its position) first."""
    cfg = self.config
    if not cfg.class_token:
      return tokens
    cls = (self.cls_token + self.positions()[:1]).astype(tokens.dtype)
    return jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, cfg.d_model)),
                            tokens], axis=1)

  def encode(self, tokens, *, train: bool = False):
    """Blocks and final norm over already-embedded tokens of any length, [B, n, D]."""
    return self.encoder(tokens, train=train)

  def pool(self, encoded):
    """[B, n, D] -> [B, D]: the class token, or the mean of the other tokens."""
    if self.config.pooling == "cls":
      return encoded[:, 0]
    return jnp.mean(encoded[:, int(self.config.class_token):], axis=1)

  def positions(self):
    """The [(1 +) N, D] position table; its first row is the class token's."""
    cfg = self.config
    if cfg.pos_embedding == "learned":
      return self.pos_embedding
    return jnp.asarray(sincos_2d(cfg.grid, cfg.grid, cfg.d_model, cls_token=cfg.class_token))


def fill_from_data(model_section, image_shape, **data_fields):
  """Sets the image fields of a config's model section (image_size, channels and any
  `data_fields` such as num_classes) that are 0 to the data's values, in place, so
  workdir/config.json records them; a set value must match the data."""
  height, width, channels = image_shape
  if height != width:
    raise UserError(f"config.data gives {height}x{width} images: a ViT needs square images "
                    "(set config.data.resolution)")
  for key, value in {"image_size": height, "channels": channels, **data_fields}.items():
    if model_section[key] == 0:
      model_section[key] = value
    elif model_section[key] != value:
      raise UserError(f"config.model.{key}={model_section[key]}, but the data has "
                      f"{key}={value} (set it to {value}, or 0 to take it from the data)")


def abstract_params(config: ViTConfig):
  """Parameter shapes (no memory allocated), with logical-axis boxes removed."""
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.channels),
                                jnp.float32)
  variables = jax.eval_shape(lambda x: ViT(config).init(jax.random.key(0), x), images)
  return nn.meta.unbox(variables["params"])


def flops_per_image(config: ViTConfig) -> float:
  """Training FLOPs per image (forward + backward = 3 x forward, 2 FLOPs per multiply-add),
  counting the matmuls: patch embedding on N patches, the blocks on T tokens, attention
  scores and values (T^2 per layer), and the head once. Norms and biases are left out."""
  d = config.d_model
  head_in = config.representation_size or d
  head_weights = config.representation_size * d + head_in * config.num_classes
  patch_weights = config.patch_size ** 2 * config.channels * d
  forward = (2 * (patch_weights * config.num_patches + head_weights)
             + stack_flops(config, config.num_tokens))
  return 3.0 * forward

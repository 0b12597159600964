"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al. 2021).

    patches -> embed + fixed sin-cos positions           (the ViT's embed_patches)
            -> random masking: keep n_keep = int(N * (1 - mask_ratio)) patches per image
            -> [class token] + kept tokens -> ViT blocks -> norm     (the encoder)
            -> Dense to the decoder width, learned mask tokens appended, unshuffled to the
               original patch order, fixed sin-cos positions added to every token
            -> light decoder blocks -> norm -> Dense to p*p*C pixels per patch
    loss    =  mean over *masked* patches of the per-patch mean squared error, against the raw
               patch pixels or (norm_pix_loss) each patch normalised by its own mean and
               (unbiased, as torch's .var) variance, eps 1e-6.

Masking is MAE's per-sample shuffle: `noise` [B, N] (uniform, from the "masking" rng stream
unless given) is argsorted, the first n_keep patches of that order are kept, and ids_restore
(the inverse permutation) puts the decoder's tokens back in raster order. Given the same noise,
genvis and Hugging Face's ViTMAEForPreTraining select the same patches
(tests/models/test_mae.py checks it). The encoder runs on the kept tokens only, which is where
MAE's 3x speed-up comes from; `encoder_mask_tokens=True` is the paper's "w/ [M]" ablation row
(table 1c): the encoder sees all N patches with the masked ones replaced by a learned encoder
mask token, and the decoder receives every token as it is.

The encoder is a `vit.ViT` submodule named "vit", so params["vit"] is exactly a ViT parameter
tree (patch_embed, cls_token, encoder/{blocks, ln_f}) that fine-tuning and probes load as is.
The decoder's params are decoder/{embed, mask_token, blocks, ln_f, pred}. Neither position
table is a parameter: both are constants.
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.models import vit
from genvis.models.gpt import count_params  # noqa: F401  (re-exported: same for every model)
from genvis.nn import partitioning as P
from genvis.nn.embeddings import sincos_2d
from genvis.nn.patches import patchify
from genvis.nn.transformer import TransformerConfig, TransformerStack, norm_layer

NORM_PIX_EPS = 1e-6  # MAE's epsilon in the per-patch target normalisation


@dataclasses.dataclass(frozen=True, kw_only=True)
class MAEConfig(vit.ViTConfig):
  """ViTConfig (the encoder) plus the decoder and the masking; flat, as config.model is."""

  decoder_d_model: int = 512
  decoder_layers: int = 8
  decoder_heads: int = 16
  decoder_mlp_dim: int = 0  # 0: 4 * decoder_d_model
  mask_ratio: float = 0.75
  norm_pix_loss: bool = False
  encoder_mask_tokens: bool = False  # the paper's "w/ [M]": the encoder sees mask tokens
  # ViTConfig fields whose MAE defaults differ.
  pos_embedding: str = "sincos"

  def __post_init__(self):
    super().__post_init__()
    if self.num_classes or self.representation_size:
      raise UserError(f"config.model.num_classes={self.num_classes} / representation_size="
                      f"{self.representation_size}: MAE pre-training has no head (set both to "
                      "0; fine-tune params['vit'] with a ViT config)")
    for key in ("decoder_d_model", "decoder_layers", "decoder_heads"):
      if getattr(self, key) < 1:
        raise UserError(f"config.model.{key}={getattr(self, key)} must be >= 1")
    if self.decoder_d_model % self.decoder_heads:
      raise UserError(f"config.model.decoder_d_model={self.decoder_d_model} is not divisible "
                      f"by config.model.decoder_heads={self.decoder_heads}")
    sincos_2d(1, 1, self.decoder_d_model, config_key="config.model.decoder_d_model")
    if self.norm_pix_loss and self.patch_dim < 2:  # one pixel has no variance to divide by
      raise UserError(f"config.model.norm_pix_loss=True needs patches of 2 or more values; "
                      f"patch_size={self.patch_size} x channels={self.channels} gives "
                      f"{self.patch_dim}")
    if not 0.0 <= self.mask_ratio < 1.0 or not 1 <= self.num_kept < self.num_patches:
      raise UserError(f"config.model.mask_ratio={self.mask_ratio} keeps {self.num_kept} of "
                      f"{self.num_patches} patches: it must keep at least one and mask at "
                      "least one")

  @property
  def num_kept(self) -> int:
    """Visible patches per image: MAE's (and Hugging Face's) int(N * (1 - mask_ratio))."""
    return int(self.num_patches * (1 - self.mask_ratio))

  @property
  def patch_dim(self) -> int:
    """Pixels the decoder predicts per patch, p * p * C."""
    return self.patch_size * self.patch_size * self.channels

  def encoder_config(self) -> vit.ViTConfig:
    """The encoder alone, as a ViTConfig (what fine-tuning params['vit'] needs)."""
    names = {f.name for f in dataclasses.fields(vit.ViTConfig)}
    return vit.ViTConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

  def decoder_config(self) -> TransformerConfig:
    """The decoder blocks: the encoder's block options at the decoder's size, dense."""
    names = {f.name for f in dataclasses.fields(TransformerConfig)}
    fields = {k: v for k, v in dataclasses.asdict(self).items() if k in names}
    fields.update(num_layers=self.decoder_layers, d_model=self.decoder_d_model,
                  num_heads=self.decoder_heads, head_dim=0, mlp_dim=self.decoder_mlp_dim,
                  causal=False, attention_pattern="dense", local_window=0)
    return TransformerConfig(**fields)


# The paper's encoders (ViT-B/L/H) with its default 512-wide, 8-deep decoder (table 1a, 1b).
VARIANTS = {size: vit.VARIANTS[size] for size in ("B", "L", "H")}
_VARIANT_NAME = re.compile(r"^(?:mae-)?(\w+)/(\d+)$")


def default_fields() -> dict:
  """MAEConfig's fields that have defaults, with them."""
  return {f.name: f.default for f in dataclasses.fields(MAEConfig)
          if f.default is not dataclasses.MISSING}


def config_for(variant: str, **overrides) -> dict:
  """Every MAEConfig field for a name such as "B/16" or "mae-H/14", as a plain dict."""
  match = _VARIANT_NAME.match(variant)
  if not match or match.group(1) not in VARIANTS:
    raise UserError(f"unknown MAE variant {variant!r}: expected SIZE/PATCH with SIZE one of "
                    f"{', '.join(VARIANTS)}, e.g. 'B/16'")
  size, patch = match.groups()
  return {**default_fields(), **VARIANTS[size], "patch_size": int(patch), **overrides}


def random_masking(tokens, mask_ratio: float, noise):
  """MAE's per-sample random masking by shuffling.

  tokens [B, N, D], noise [B, N] -> (kept [B, n_keep, D]: the tokens of the n_keep lowest
  noise values, in that order; mask [B, N] float32, 1 = masked, in the original patch order;
  ids_restore [B, N] int32: the inverse of the shuffle, so gathering the shuffled sequence
  with it restores raster order). n_keep = int(N * (1 - mask_ratio)).
  """
  batch, length = tokens.shape[:2]
  if tuple(noise.shape) != (batch, length):
    raise UserError(f"masking noise of shape {tuple(noise.shape)}: expected (batch, "
                    f"num_patches) = ({batch}, {length})")
  num_kept = int(length * (1 - mask_ratio))
  ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)  # ascending: small noise is kept
  ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
  kept = jnp.take_along_axis(tokens, ids_shuffle[:, :num_kept, None], axis=1)
  # A patch is masked when its place in the shuffled order is at or past n_keep.
  mask = (ids_restore >= num_kept).astype(jnp.float32)
  return kept, mask, ids_restore


def unshuffle(shuffled, ids_restore):
  """[B, N, D] in shuffled order -> raster order (the decoder's step, MAE's gather)."""
  return jnp.take_along_axis(shuffled, ids_restore[:, :, None], axis=1)


def patch_targets(images, config: MAEConfig):
  """The reconstruction targets [B, N, p*p*C] in float32, normalised per patch if asked."""
  target = patchify(images.astype(jnp.float32), config.patch_size)
  if config.norm_pix_loss:
    mean = jnp.mean(target, axis=-1, keepdims=True)
    var = jnp.var(target, axis=-1, keepdims=True, ddof=1)  # torch's unbiased .var, as MAE
    target = (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)
  return target


def masked_mse(pred, target, mask):
  """Mean over masked patches of each patch's mean squared error (visible ones cost 0)."""
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  return jnp.sum(per_patch * mask) / jnp.sum(mask)


def _xavier_dense(features, axes, config, name):
  """MAE initialises its linear layers Xavier-uniform with zero bias."""
  return nn.Dense(features, dtype=P.dtype(config.dtype), param_dtype=P.dtype(config.param_dtype),
                  kernel_init=P.param_init(nn.initializers.xavier_uniform(), axes),
                  bias_init=P.param_init(nn.initializers.zeros, axes[-1:]), name=name)


class Decoder(nn.Module):
  """Encoder tokens -> decoder width -> [mask tokens, unshuffle] -> positions -> blocks ->
  norm -> per-patch pixels [B, N, p*p*C] (the class token's slot is dropped)."""

  config: MAEConfig

  @nn.compact
  def __call__(self, latent, ids_restore, train: bool = False):
    cfg = self.config
    width, prefix = cfg.decoder_d_model, int(cfg.class_token)
    x = _xavier_dense(width, (None, P.EMBED), cfg, "embed")(latent)
    if not cfg.encoder_mask_tokens:  # the encoder saw n_keep patches: fill in the rest
      mask_token = self.param("mask_token", P.param_init(nn.initializers.normal(0.02),
                                                         (None, None, P.EMBED)),
                              (1, 1, width), P.dtype(cfg.param_dtype))
      batch, num_masked = x.shape[0], cfg.num_patches - (x.shape[1] - prefix)
      fill = jnp.broadcast_to(mask_token.astype(x.dtype), (batch, num_masked, width))
      patches = unshuffle(jnp.concatenate([x[:, prefix:], fill], axis=1), ids_restore)
      x = jnp.concatenate([x[:, :prefix], patches], axis=1)
    positions = sincos_2d(cfg.grid, cfg.grid, width, cls_token=cfg.class_token,
                          config_key="config.model.decoder_d_model")
    x = P.constrain(x + jnp.asarray(positions, x.dtype), (P.BATCH, P.LENGTH, P.EMBED))
    x = TransformerStack(cfg.decoder_config(), train, name="blocks")(x)
    x = norm_layer(cfg, "ln_f")(x)
    return _xavier_dense(cfg.patch_dim, (P.EMBED, None), cfg, "pred")(x[:, prefix:])


class MAE(nn.Module):
  """Masked autoencoder; `__call__` is one pre-training forward pass with its loss."""

  config: MAEConfig

  def setup(self):
    cfg = self.config
    self.vit = vit.ViT(cfg.encoder_config())
    if cfg.encoder_mask_tokens:
      self.encoder_mask_token = self.param(
          "encoder_mask_token", P.param_init(nn.initializers.normal(0.02),
                                             (None, None, P.EMBED)),
          (1, 1, cfg.d_model), P.dtype(cfg.param_dtype))
    self.decoder = Decoder(cfg)

  def __call__(self, images, *, noise=None, train: bool = False) -> dict:
    """images [B, S, S, C] -> dict(loss (scalar float32), pred [B, N, p*p*C] (the decoder's
    output, comparable with `patch_targets`), mask [B, N] (1 = masked), ids_restore [B, N]).
    Without `noise`, it is drawn uniform from the "masking" rng stream."""
    cfg = self.config
    latent, mask, ids_restore = self.encode_masked(images, noise=noise, train=train)
    pred = self.decoder(latent, ids_restore, train)
    loss = masked_mse(pred, patch_targets(images, cfg), mask)
    return dict(loss=loss, pred=pred, mask=mask, ids_restore=ids_restore)

  def encode_masked(self, images, *, noise=None, train: bool = False):
    """(encoder output [B, (1 +) n_keep, D] — or [B, (1 +) N, D] with encoder mask tokens —,
    mask [B, N], ids_restore [B, N]) for one random masking of `images`."""
    cfg = self.config
    tokens = self.vit.embed_patches(images)
    if noise is None:
      noise = jax.random.uniform(self.make_rng("masking"), tokens.shape[:2])
    kept, mask, ids_restore = random_masking(tokens, cfg.mask_ratio, noise)
    if cfg.encoder_mask_tokens:
      # "w/ [M]": masked patches become the mask token plus their own position.
      positions = self.vit.positions()[-cfg.num_patches:]
      masked = (self.encoder_mask_token + positions).astype(tokens.dtype)
      kept = jnp.where(mask[:, :, None] > 0, masked, tokens)
    latent = self.vit.encode(self.vit.prepend_class_token(kept), train=train)
    return latent, mask, ids_restore

  def encode_images(self, images, *, train: bool = False):
    """Every patch, unmasked, through the encoder: [B, num_tokens, D] (for probes)."""
    return self.vit.encode_images(images, train=train)

  def features(self, images):
    """The pooled encoder representation [B, D] of whole images (config.model.pooling)."""
    return self.vit.pool(self.vit.encode_images(images))


def mae_encoder_features(model: MAE, params, images, *, pooled: bool = True):
  """Encoder features of unmasked images from MAE params: [B, D] pooled, or every token."""
  method = "features" if pooled else "encode_images"
  return model.apply({"params": params}, images, method=method)


def abstract_params(config: MAEConfig):
  """Parameter shapes (no memory allocated), with logical-axis boxes removed."""
  images = jax.ShapeDtypeStruct((1, config.image_size, config.image_size, config.channels),
                                jnp.float32)
  noise = jax.ShapeDtypeStruct((1, config.num_patches), jnp.float32)
  variables = jax.eval_shape(
      lambda x, n: MAE(config).init(jax.random.key(0), x, noise=n), images, noise)
  return nn.meta.unbox(variables["params"])

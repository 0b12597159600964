"""U-Net score networks of the DDPM / DDPM++ family (Ho et al. 2020; Song et al. 2021).

The network s(x, t) maps noisy images [B, S, S, C] and one time per image [B] to an output
of the images' shape: a score, a noise prediction or a velocity, as the task's loss reads it.

    t -> embedding (sinusoidal of 999 t, or Fourier features of log sigma) -> Dense 4nf ->
         SiLU -> Dense 4nf  (+ a class embedding)                          = temb [B, 4nf]
    x -> conv 3x3 to nf
      -> per level l (resolution S / 2^l, width nf * channel_mult[l]):
           num_res_blocks x [ResBlock(temb) (-> self-attention if the resolution is listed)]
           then a 2x downsampling (all levels but the last); every output is kept as a skip
      -> middle: ResBlock, self-attention, ResBlock
      -> per level, coarsest first: (num_res_blocks + 1) x ResBlock(concat[h, skip], temb),
           self-attention at listed resolutions, a 2x upsampling (all levels but the first)
      -> GroupNorm -> SiLU -> conv 3x3 to C  [-> / sigma(t) with scale_by_sigma]

A ResBlock is GroupNorm -> SiLU -> conv -> + Dense(SiLU(temb)) per channel -> GroupNorm ->
SiLU -> dropout -> conv, added to the input (through a 1x1 projection where the width
changes). Group norms use min(C / 4, 32) groups, as score_sde does. Self-attention is one
head over all S^2 positions with 1x1 query/key/value/output projections.

Config fields, and the papers' choices they reproduce:
- `resblock="ddpm"`: resampling by a strided conv / nearest-neighbour upsampling plus conv
  (`resamp_with_conv`), or by pooling / repetition alone. "biggan" (DDPM++): resampling inside
  a ResBlock that average-pools or repeats both branches, with a 1x1 conv on the shortcut.
- `skip_rescale`: residual sums (ResBlocks and attention) are divided by sqrt(2), keeping the
  variance of the stream constant through depth (DDPM++, NCSN++).
- `time_embedding` and `time_input`: "positional" of `time_scale` * t (DDPM, DDPM++ for VP;
  score_sde feeds 999 t) or "fourier" (scale `fourier_scale`) of log sigma(t) (NCSN++ for VE,
  `time_input="log_std"`).
- `init_scale=0`: the last conv of every residual branch, the attention output and the
  output conv start near zero (variance scale 1e-10, as score_sde: weights ~1e-6, not
  exactly 0, so the layers before them still get gradients). Every block thus starts as its
  shortcut and the network's output near 0. Other layers use DDPM's fan-average uniform
  initialisation.
- `attention_every_up_block`: the original DDPM attends after every ResBlock of the up path;
  score_sde's DDPM++/NCSN++ once per level.
- `scale_by_sigma`: the output is divided by the marginal std s(t), which the caller passes
  as `std=` (NCSN++ for VE: the network predicts -z and the division makes it a score).
- `num_classes > 0`: a learned class embedding is added to temb. Its table has one extra row,
  index num_classes, the "no label" embedding used when `labels` is None (the null condition
  of classifier-free guidance).

Not implemented from NCSN++: FIR resampling kernels and the progressive input/output pyramids;
so its exact CIFAR-10 VE model is not available (DDPM, DDPM++ and DDPM++ deep are, see
VARIANTS). Inputs are taken as already scaled (score_sde's `data.centered` is the data's job).

Call: `model.apply(variables, x, t, train=..., std=..., labels=..., rngs={"dropout": rng})`.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.models.gpt import count_params  # noqa: F401  (re-exported: same for every model)
from genvis.nn import partitioning as P
from genvis.nn.dropout import Dropout
from genvis.nn.time_embeddings import (FourierFeatures, check_fourier_frequencies,
                                       check_noise_inputs, noise_level_input,
                                       sinusoidal_embedding)

CHOICES = {
    "resblock": ("ddpm", "biggan"),
    "time_embedding": ("positional", "fourier"),
    "time_input": ("time", "log_std"),
}


def norm_groups(width: int) -> int:
  """score_sde's group count for a GroupNorm over `width` channels."""
  return min(width // 4, 32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class UNetConfig:
  """Sizes and switches of the U-Net; the defaults are DDPM++ cont. (VP) on CIFAR-10."""

  image_size: int = 32  # square images of image_size x image_size pixels
  channels: int = 3  # input and output channels
  base_width: int = 128  # nf: the width of the first level
  channel_mult: tuple[int, ...] = (1, 2, 2, 2)  # level widths in units of base_width
  num_res_blocks: int = 4  # ResBlocks per level on the way down (one more on the way up)
  attention_resolutions: tuple[int, ...] = (16,)  # resolutions (pixels per side) that attend
  attention_every_up_block: bool = False  # True: original DDPM; False: DDPM++ / NCSN++
  dropout: float = 0.1
  resblock: str = "biggan"  # "ddpm" or "biggan" (how levels are down/upsampled)
  resamp_with_conv: bool = True  # "ddpm" resampling: with a 3x3 conv, or pool / repeat only
  skip_rescale: bool = True  # divide residual sums by sqrt(2)
  conditional: bool = True  # False: the network ignores t (NCSN's unconditional variant)
  time_embedding: str = "positional"  # "positional" (sinusoidal) or "fourier"
  time_input: str = "time"  # what is embedded: "time" (time_scale * t) or "log_std"
  time_scale: float = 999.0  # score_sde's VP models embed 999 t; use 1 for Fourier of t
  fourier_scale: float = 16.0  # std of the Fourier features' frequencies
  num_classes: int = 0  # > 0: class-conditional (plus a "no label" row)
  scale_by_sigma: bool = False  # divide the output by the `std` passed in
  init_scale: float = 0.0  # scale of the residual branches' last layers (0: ~zero)
  norm_epsilon: float = 1e-6
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"

  def __post_init__(self):
    # Tuples from a config file come back from config.json as lists; store tuples, so the
    # config stays hashable and compares equal to the original.
    for key in ("channel_mult", "attention_resolutions"):
      value = getattr(self, key)
      if isinstance(value, (int, str)) or not all(isinstance(v, int) for v in value):
        raise UserError(f"config.model.{key}={value!r}: expected a tuple of integers")
      object.__setattr__(self, key, tuple(int(v) for v in value))
    for key, allowed in CHOICES.items():
      if getattr(self, key) not in allowed:
        raise UserError(f"config.model.{key}={getattr(self, key)!r}: expected one of "
                        f"{', '.join(allowed)}")
    for key, low in (("image_size", 1), ("channels", 1), ("base_width", 4),
                     ("num_res_blocks", 1), ("num_classes", 0)):
      if getattr(self, key) < low:
        raise UserError(f"config.model.{key}={getattr(self, key)} must be >= {low}")
    if not self.channel_mult or min(self.channel_mult) < 1:
      raise UserError(f"config.model.channel_mult={self.channel_mult}: expected one positive "
                      "multiplier per level")
    if not 0 <= self.dropout < 1:
      raise UserError(f"config.model.dropout={self.dropout} must be in [0, 1)")
    for key in ("time_scale", "fourier_scale"):
      if not getattr(self, key) > 0:
        raise UserError(f"config.model.{key}={getattr(self, key)} must be > 0")
    check_fourier_frequencies(self.time_embedding, self.time_input, self.time_scale,
                              self.fourier_scale)
    halvings = len(self.channel_mult) - 1
    if self.image_size % 2**halvings:
      raise UserError(f"config.model.image_size={self.image_size} must be divisible by "
                      f"2^{halvings} (one halving per level of config.model.channel_mult)")
    unknown = sorted(set(self.attention_resolutions) - set(self.resolutions))
    if unknown:
      raise UserError(f"config.model.attention_resolutions={self.attention_resolutions}: "
                      f"{unknown} is not a level's resolution; the levels are "
                      f"{self.resolutions}")
    for width in sorted(_group_norm_widths(self)):
      if width % norm_groups(width):
        raise UserError(f"config.model.base_width={self.base_width} with channel_mult="
                        f"{self.channel_mult}: a GroupNorm over {width} channels cannot use "
                        f"min({width} // 4, 32) = {norm_groups(width)} groups; use a "
                        "base_width that is a multiple of 32")
    P.dtype(self.dtype), P.dtype(self.param_dtype)  # a UserError for an unknown name

  @property
  def resolutions(self) -> tuple[int, ...]:
    """Pixels per side at each level."""
    return tuple(self.image_size // 2**level for level in range(len(self.channel_mult)))

  @property
  def time_width(self) -> int:
    """Width of the time (and class) embedding every ResBlock reads: 4 nf."""
    return 4 * self.base_width


def _group_norm_widths(cfg: UNetConfig) -> set[int]:
  """Every channel count a GroupNorm sees, following the skips through the up path."""
  widths, width, skips = set(), cfg.base_width, [cfg.base_width]
  last = len(cfg.channel_mult) - 1
  for level, mult in enumerate(cfg.channel_mult):
    for _ in range(cfg.num_res_blocks):
      widths |= {width, cfg.base_width * mult}
      width = cfg.base_width * mult
      skips.append(width)
    if level != last:
      skips.append(width)
  for level in reversed(range(len(cfg.channel_mult))):
    for _ in range(cfg.num_res_blocks + 1):
      widths |= {width + skips.pop(), cfg.base_width * cfg.channel_mult[level]}
      width = cfg.base_width * cfg.channel_mult[level]
  return widths | {width}


# Named sizes (parameter counts in tests/models/test_unet.py). "cpu" is sized for the 8x8
# digits on a CPU (0.68M parameters). The others are CIFAR-10 models: the original DDPM (Ho
# et al.'s TF U-Net, 35.7M, with attention after every up block, initialised as score_sde's
# port, configs/vp/ddpm/cifar10.py, which attends once per level) and score_sde's DDPM++ cont.
# (configs/vp/cifar10_ddpmpp_continuous.py, 61.8M; "deep": the 8-block
# configs/subvp/cifar10_ddpmpp_deep_continuous.py, 106.6M).
VARIANTS = {
    "cpu": dict(image_size=8, channels=1, base_width=32, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), dropout=0.0, resblock="ddpm"),
    "ddpm-cifar10": dict(base_width=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                         attention_resolutions=(16,), attention_every_up_block=True,
                         resblock="ddpm", skip_rescale=False),
    "ddpmpp-cifar10": dict(base_width=128, channel_mult=(1, 2, 2, 2), num_res_blocks=4,
                           attention_resolutions=(16,), resblock="biggan", skip_rescale=True),
    "ddpmpp-deep-cifar10": dict(base_width=128, channel_mult=(1, 2, 2, 2), num_res_blocks=8,
                                attention_resolutions=(16,), resblock="biggan",
                                skip_rescale=True),
}


def default_fields() -> dict:
  """UNetConfig's fields with their defaults."""
  return {f.name: f.default for f in dataclasses.fields(UNetConfig)}


def config_for(variant: str, **overrides) -> dict:
  """Every UNetConfig field for a named size, as a plain dict (for config files)."""
  if variant not in VARIANTS:
    raise UserError(f"unknown U-Net variant {variant!r}: expected one of {', '.join(VARIANTS)}")
  return {**default_fields(), **VARIANTS[variant], **overrides}


def ddpm_init(scale: float = 1.0):
  """DDPM's initialiser: fan-average uniform variance scaling; scale 0 becomes 1e-10 (as in
  score_sde), so a 'zero' layer still passes gradients to the layers before it."""
  return nn.initializers.variance_scaling(scale or 1e-10, "fan_avg", "uniform")


def _conv(cfg: UNetConfig, features: int, *, stride: int = 1, init_scale: float = 1.0,
          in_axis=P.EMBED, out_axis=P.MLP, name=None) -> nn.Conv:
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding="SAME",
                 dtype=P.dtype(cfg.dtype), param_dtype=P.dtype(cfg.param_dtype),
                 kernel_init=P.param_init(ddpm_init(init_scale),
                                          (None, None, in_axis, out_axis)),
                 bias_init=P.param_init(nn.initializers.zeros, (None,)), name=name)


def _dense(cfg: UNetConfig, features: int, *, init_scale: float = 1.0, in_axis=P.EMBED,
           out_axis=P.MLP, name=None) -> nn.Dense:
  return nn.Dense(features, dtype=P.dtype(cfg.dtype), param_dtype=P.dtype(cfg.param_dtype),
                  kernel_init=P.param_init(ddpm_init(init_scale), (in_axis, out_axis)),
                  bias_init=P.param_init(nn.initializers.zeros, (None,)), name=name)


def _group_norm(cfg: UNetConfig, width: int, name=None) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=norm_groups(width), epsilon=cfg.norm_epsilon,
                      dtype=P.dtype(cfg.dtype), param_dtype=P.dtype(cfg.param_dtype),
                      scale_init=P.param_init(nn.initializers.ones, (None,)),
                      bias_init=P.param_init(nn.initializers.zeros, (None,)), name=name)


def _residual_sum(cfg: UNetConfig, skip, branch):
  total = skip + branch
  return total / math.sqrt(2.0) if cfg.skip_rescale else total


def _downsample_2x(x):
  """Average of each 2x2 patch: [B, H, W, C] -> [B, H/2, W/2, C]."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _upsample_2x(x):
  """Nearest-neighbour: each pixel repeated 2x2."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(nn.Module):
  """Residual block conditioned on temb; `resample` "down"/"up" is the "biggan" variant."""

  config: UNetConfig
  out_width: int
  resample: str = "none"  # "none", "down" or "up"

  @nn.compact
  def __call__(self, x, temb, train: bool):
    cfg = self.config
    in_width = x.shape[-1]
    h = nn.silu(_group_norm(cfg, in_width, name="norm_0")(x))
    if self.resample != "none":
      resample = _downsample_2x if self.resample == "down" else _upsample_2x
      h, x = resample(h), resample(x)
    h = _conv(cfg, self.out_width, name="conv_0")(h)
    if temb is not None:  # a per-channel bias from the time (and class) embedding
      h = h + _dense(cfg, self.out_width, name="time_proj")(nn.silu(temb))[:, None, None, :]
    h = nn.silu(_group_norm(cfg, self.out_width, name="norm_1")(h))
    h = Dropout(cfg.dropout)(h, deterministic=not train)
    h = _conv(cfg, self.out_width, init_scale=cfg.init_scale, name="conv_1")(h)
    if in_width != self.out_width or self.resample != "none":
      # score_sde's DDPM port initialises its 1x1 "network in network" at scale 0.1 (Ho et
      # al.'s TF code at 1.0), BigGAN's 1x1 conv at 1.
      x = _dense(cfg, self.out_width, init_scale=0.1 if cfg.resblock == "ddpm" else 1.0,
                 name="shortcut")(x)
    return P.constrain(_residual_sum(cfg, x, h), (P.BATCH, None, None, P.EMBED))


class AttentionBlock(nn.Module):
  """One-head self-attention over all positions, added to the input."""

  config: UNetConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    b, height, width, c = x.shape
    h = _group_norm(cfg, c, name="norm")(x)
    # [B, H*W, 1 head, C]: q, k, v are 1x1 projections (score_sde's NIN layers, scale 0.1).
    q, k, v = (_dense(cfg, c, init_scale=0.1, name=name)(h).reshape(b, height * width, 1, c)
               for name in ("query", "key", "value"))
    h = jax.nn.dot_product_attention(q, k, v).reshape(b, height, width, c)
    h = _dense(cfg, c, init_scale=cfg.init_scale, in_axis=P.MLP, out_axis=P.EMBED,
               name="out")(h)
    return _residual_sum(cfg, x, h)


class DownLevel(nn.Module):
  """One resolution on the way down; returns every activation the up path will reuse."""

  config: UNetConfig
  level: int

  @nn.compact
  def __call__(self, h, temb, train: bool) -> list:
    cfg = self.config
    width = cfg.base_width * cfg.channel_mult[self.level]
    attend = cfg.resolutions[self.level] in cfg.attention_resolutions
    skips = []
    for i in range(cfg.num_res_blocks):
      h = ResBlock(cfg, width, name=f"block_{i}")(h, temb, train)
      if attend:
        h = AttentionBlock(cfg, name=f"attn_{i}")(h)
      skips.append(h)
    if self.level != len(cfg.channel_mult) - 1:
      if cfg.resblock == "biggan":
        h = ResBlock(cfg, width, resample="down", name="downsample")(h, temb, train)
      elif cfg.resamp_with_conv:
        h = _conv(cfg, width, stride=2, name="downsample")(h)
      else:
        h = _downsample_2x(h)
      skips.append(h)
    return skips


class UpLevel(nn.Module):
  """One resolution on the way up: each ResBlock reads [h, skip] concatenated on channels."""

  config: UNetConfig
  level: int

  @nn.compact
  def __call__(self, h, skips, temb, train: bool):
    cfg = self.config
    width = cfg.base_width * cfg.channel_mult[self.level]
    attend = cfg.resolutions[self.level] in cfg.attention_resolutions
    for i, skip in enumerate(skips):
      h = ResBlock(cfg, width, name=f"block_{i}")(jnp.concatenate([h, skip], axis=-1), temb,
                                                  train)
      if attend and cfg.attention_every_up_block:
        h = AttentionBlock(cfg, name=f"attn_{i}")(h)
    if attend and not cfg.attention_every_up_block:
      h = AttentionBlock(cfg, name="attn")(h)
    if self.level != 0:
      if cfg.resblock == "biggan":
        h = ResBlock(cfg, width, resample="up", name="upsample")(h, temb, train)
      else:
        h = _upsample_2x(h)
        if cfg.resamp_with_conv:
          h = _conv(cfg, width, name="upsample")(h)
    return h


class UNet(nn.Module):
  """The score network; see the module docstring for the layout and the config fields."""

  config: UNetConfig

  @nn.compact
  def __call__(self, x, t, *, train: bool = False, std=None, labels=None):
    """x [B, S, S, C], t [B] float -> [B, S, S, C] float32.

    std [B]: the marginal std s(t) of the caller's SDE, required when the config divides
    the output by it (`scale_by_sigma`) or embeds it (`time_input="log_std"`).
    labels [B] int in [0, num_classes): class conditioning; None: the "no label" row.
    """
    cfg = self.config
    labels = None if labels is None else jnp.asarray(labels)
    self._check_inputs(x, t, std, labels)
    temb = self._embed_conditions(t, std, labels)
    h = _conv(cfg, cfg.base_width, in_axis=None, name="conv_in")(x.astype(P.dtype(cfg.dtype)))
    skips = [h]
    for level in range(len(cfg.channel_mult)):
      skips += DownLevel(cfg, level, name=f"down_{level}")(skips[-1], temb, train)
    h = skips[-1]
    h = ResBlock(cfg, h.shape[-1], name="mid_block_0")(h, temb, train)
    h = AttentionBlock(cfg, name="mid_attn")(h)
    h = ResBlock(cfg, h.shape[-1], name="mid_block_1")(h, temb, train)
    for level in reversed(range(len(cfg.channel_mult))):
      # The up path reads the down path's activations in reverse order.
      count = cfg.num_res_blocks + 1
      level_skips, skips = skips[-count:][::-1], skips[:-count]
      h = UpLevel(cfg, level, name=f"up_{level}")(h, level_skips, temb, train)
    h = nn.silu(_group_norm(cfg, h.shape[-1], name="norm_out")(h))
    h = _conv(cfg, cfg.channels, init_scale=cfg.init_scale, out_axis=None,
              name="conv_out")(h).astype(jnp.float32)
    if cfg.scale_by_sigma:
      h = h / std.astype(jnp.float32).reshape(-1, 1, 1, 1)
    return h

  def _embed_conditions(self, t, std, labels):
    """temb [B, 4 nf] from the noise level and the class, or None if neither is used."""
    cfg = self.config
    temb = None
    if cfg.conditional:
      value = noise_level_input(t, std, cfg.time_input, cfg.time_scale)
      if cfg.time_embedding == "fourier":
        temb = FourierFeatures(cfg.base_width, cfg.fourier_scale, name="time_fourier")(value)
      else:
        temb = sinusoidal_embedding(value, cfg.base_width)
      temb = _dense(cfg, cfg.time_width, in_axis=None, name="time_dense_0")(temb)
      temb = _dense(cfg, cfg.time_width, name="time_dense_1")(nn.silu(temb))
    if cfg.num_classes:
      if labels is None:
        labels = jnp.full(t.shape, cfg.num_classes, jnp.int32)
      class_embedding = nn.Embed(
          cfg.num_classes + 1, cfg.time_width, dtype=P.dtype(cfg.dtype),
          param_dtype=P.dtype(cfg.param_dtype),
          embedding_init=P.param_init(nn.initializers.normal(1.0), (None, P.EMBED)),
          name="class_embed")(labels)
      temb = class_embedding if temb is None else temb + class_embedding
    return temb

  def _check_inputs(self, x, t, std, labels):
    cfg = self.config
    expected = (cfg.image_size, cfg.image_size, cfg.channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
      raise UserError(f"images of shape {tuple(x.shape)} (B, H, W, C): the U-Net expects "
                      f"(B, {', '.join(map(str, expected))}) from config.model.image_size "
                      "and config.model.channels")
    needs = [name for name, on in (("config.model.scale_by_sigma=True", cfg.scale_by_sigma),
                                   ("config.model.time_input='log_std'",
                                    cfg.conditional and cfg.time_input == "log_std")) if on]
    check_noise_inputs(x.shape[0], t, std, needs_std=bool(needs), why_std=" and ".join(needs),
                       where="UNet")
    if labels is not None:
      if not cfg.num_classes:
        raise UserError("UNet got labels, but config.model.num_classes=0 (unconditional); set "
                        "it to the number of classes")
      if jnp.shape(labels) != (x.shape[0],) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise UserError(f"UNet: labels must be integers of shape [B]=[{x.shape[0]}], got "
                        f"{labels.dtype} {list(jnp.shape(labels))}")


def abstract_params(config: UNetConfig):
  """Parameter shapes (no memory allocated), with logical-axis boxes removed."""
  shape = (1, config.image_size, config.image_size, config.channels)
  images = jax.ShapeDtypeStruct(shape, jnp.float32)
  times = jax.ShapeDtypeStruct((1,), jnp.float32)
  variables = jax.eval_shape(
      lambda x, t: UNet(config).init(jax.random.key(0), x, t, std=jnp.ones_like(t)),
      images, times)
  return nn.meta.unbox(variables["params"])

"""A noise-conditional classifier p_t(y | x_t), for class-conditional sampling with an
unconditional score model (Song et al. 2021, section 5; Dhariwal & Nichol 2021's guidance).

grad_x log p_t(y | x) must be sensible at every noise level the sampler visits, so the
classifier is trained on diffused data x_t ~ p_0t(. | x_0) at random t and told the noise
level: Fourier features of log s(t) (the marginal std, which every SDE of
genvis/diffusion/sde.py reports) go through a small MLP and are added to every hidden layer,
as the U-Net adds its time embedding. Inputs are expected at unit scale; the task divides x_t
by sqrt(a(t)^2 + s(t)^2), which keeps VE's x_t (std up to sigma_max) in range too.

Two bodies, chosen by the data:
- "mlp" (points [B, d]): num_layers x (Dense(width) + temb -> SiLU), then Dense(classes);
- "conv" (images [B, H, W, C]): conv 3x3 to width, then num_layers stages of
  (GroupNorm -> SiLU -> + temb -> conv 3x3, stride 2 after the first), mean over positions,
  Dense(classes). Batch statistics are never used, so examples stay independent (the guided
  score's gradient of a batch sum is then each example's own gradient).
"""

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.nn import partitioning as P
from genvis.nn.time_embeddings import FourierFeatures

KINDS = ("mlp", "conv")
MIN_STD = 1e-6  # log s(t) is read at s >= this (VP's s(0) = 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoisyClassifierConfig:
  num_classes: int
  kind: str = "mlp"  # "mlp" for points, "conv" for images
  width: int = 64
  num_layers: int = 2
  embedding_width: int = 32  # Fourier features of log std (sines and cosines)
  fourier_scale: float = 1.0  # log s spans a few units: low frequencies suffice

  def __post_init__(self):
    if self.kind not in KINDS:
      raise UserError(f"config.sde.classifier_kind={self.kind!r}: expected one of "
                      f"{', '.join(KINDS)}")
    if self.num_classes < 2:
      raise UserError(f"the noise-conditional classifier needs >= 2 classes, the data has "
                      f"{self.num_classes} (config.sde.classifier)")
    for key in ("width", "num_layers"):
      if getattr(self, key) < 1:
        raise UserError(f"config.sde.classifier_{key}={getattr(self, key)} must be >= 1")
    if self.kind == "conv" and self.width % 8:
      raise UserError(f"config.sde.classifier_width={self.width}: the conv classifier's "
                      "GroupNorm (8 groups) needs a multiple of 8")


def _dense(features, name):
  return nn.Dense(features, kernel_init=P.param_init(nn.initializers.lecun_normal(),
                                                      (None, None)),
                  bias_init=P.param_init(nn.initializers.zeros, (None,)), name=name)


def _conv(features, stride, name):
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding="SAME",
                 kernel_init=P.param_init(nn.initializers.lecun_normal(),
                                          (None, None, None, None)),
                 bias_init=P.param_init(nn.initializers.zeros, (None,)), name=name)


class NoisyClassifier(nn.Module):
  """(x [B, ...] at unit scale, std [B]) -> logits [B, num_classes] float32."""

  config: NoisyClassifierConfig

  @nn.compact
  def __call__(self, x, std):
    cfg = self.config
    if std.shape != x.shape[:1]:
      raise UserError(f"NoisyClassifier: std must be [B]=[{x.shape[0]}], got {list(std.shape)}")
    features = FourierFeatures(cfg.embedding_width // 2, cfg.fourier_scale,
                               name="noise_fourier")(jnp.log(jnp.maximum(std, MIN_STD)))
    temb = _dense(cfg.width, "noise_dense_1")(nn.silu(_dense(cfg.width, "noise_dense_0")(
        features)))
    if cfg.kind == "mlp":
      if x.ndim != 2:
        raise UserError(f"the mlp classifier takes points [B, d], got {list(x.shape)}")
      h = x
      for i in range(cfg.num_layers):
        h = nn.silu(_dense(cfg.width, f"hidden_{i}")(h) + temb)
    else:
      if x.ndim != 4:
        raise UserError(f"the conv classifier takes images [B, H, W, C], got {list(x.shape)}")
      h = _conv(cfg.width, 1, "conv_in")(x)
      for i in range(cfg.num_layers):
        norm = nn.GroupNorm(num_groups=8, name=f"norm_{i}",
                            scale_init=P.param_init(nn.initializers.ones, (None,)),
                            bias_init=P.param_init(nn.initializers.zeros, (None,)))
        h = nn.silu(norm(h))
        h = h + _dense(cfg.width, f"noise_proj_{i}")(temb)[:, None, None, :]
        h = _conv(cfg.width, 1 if i == 0 else 2, f"conv_{i}")(h)
      h = jnp.mean(nn.silu(h), axis=(1, 2))
    return _dense(cfg.num_classes, "logits")(h).astype(jnp.float32)

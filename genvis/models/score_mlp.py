"""An MLP score network for low-dimensional toy data (2-D mixtures and Gaussians).

On toy densities the true score is known in closed form (genvis/diffusion/gaussian.py), so a
small network that learns it is the fastest end-to-end check of a loss, an SDE or a sampler.
Images need the U-Net (genvis/models/unet.py); points need only this:

    t -> Fourier features (or the sinusoidal embedding) of time_scale * t (or of log std)
    x [B, d] -> num_layers x (Dense(width) -> SiLU) -> Dense(d)  [-> / std]

with the time embedding either concatenated to x at the input ("concat", as in score_sde's
tutorial notebooks) or projected by its own Dense and added before every activation ("add":
each layer sees t directly, which helps when the score changes fast with t).

`scale_by_sigma` divides the output by the marginal std passed as `std=` (as the U-Net's), so
the layers predict -z, a unit-scale target at every t. The parameters carry no sharding
names: a few tens of thousands of them are replicated on every device.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.models.gpt import count_params  # noqa: F401  (re-exported: same for every model)
from genvis.nn import partitioning as P
from genvis.nn.time_embeddings import (FourierFeatures, check_fourier_frequencies,
                                       check_noise_inputs, noise_level_input,
                                       sinusoidal_embedding)

CHOICES = {
    "time_embedding": ("fourier", "positional"),
    "time_input": ("time", "log_std"),
    "conditioning": ("concat", "add"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreMLPConfig:
  data_dim: int = 2  # d: the points' dimension (input and output)
  hidden_width: int = 128
  num_layers: int = 3  # hidden layers
  time_embedding: str = "fourier"  # "fourier" (random features) or "positional" (sinusoidal)
  embedding_width: int = 32  # width of the time embedding (even)
  time_input: str = "time"  # "time": embed time_scale * t; "log_std": embed log std
  time_scale: float = 1.0  # use 999 with "positional" (its frequencies were made for steps)
  fourier_scale: float = 16.0  # std of the Fourier features' frequencies
  conditioning: str = "concat"  # "concat" (at the input) or "add" (before every activation)
  scale_by_sigma: bool = False  # divide the output by the `std` passed in
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    for key, allowed in CHOICES.items():
      if getattr(self, key) not in allowed:
        raise UserError(f"config.model.{key}={getattr(self, key)!r}: expected one of "
                        f"{', '.join(allowed)}")
    for key in ("data_dim", "hidden_width", "num_layers"):
      if getattr(self, key) < 1:
        raise UserError(f"config.model.{key}={getattr(self, key)} must be >= 1")
    if self.embedding_width < 4 or self.embedding_width % 2:
      raise UserError(f"config.model.embedding_width={self.embedding_width}: expected an even "
                      "width >= 4 (sines and cosines)")
    for key in ("time_scale", "fourier_scale"):
      if not getattr(self, key) > 0:
        raise UserError(f"config.model.{key}={getattr(self, key)} must be > 0")
    check_fourier_frequencies(self.time_embedding, self.time_input, self.time_scale,
                              self.fourier_scale)
    P.dtype(self.dtype), P.dtype(self.param_dtype)  # a UserError for an unknown name


def default_fields() -> dict:
  """ScoreMLPConfig's fields with their defaults."""
  return {f.name: f.default for f in dataclasses.fields(ScoreMLPConfig)}


class ScoreMLP(nn.Module):
  """x [B, d], t [B] -> [B, d] float32; `std` [B] as for the U-Net."""

  config: ScoreMLPConfig

  @nn.compact
  def __call__(self, x, t, *, train: bool = False, std=None):
    del train  # no dropout: kept for the same call signature as the U-Net
    cfg = self.config
    if x.ndim != 2 or x.shape[1] != cfg.data_dim:
      raise UserError(f"ScoreMLP: x of shape {list(x.shape)}: expected [B, {cfg.data_dim}] "
                      "from config.model.data_dim")
    needs = [name for name, on in (("config.model.scale_by_sigma=True", cfg.scale_by_sigma),
                                   ("config.model.time_input='log_std'",
                                    cfg.time_input == "log_std")) if on]
    check_noise_inputs(x.shape[0], t, std, needs_std=bool(needs), why_std=" and ".join(needs),
                       where="ScoreMLP")
    dtype = P.dtype(cfg.dtype)
    value = noise_level_input(t, std, cfg.time_input, cfg.time_scale)
    if cfg.time_embedding == "fourier":
      embedding = FourierFeatures(cfg.embedding_width // 2, cfg.fourier_scale,
                                  name="time_fourier")(value)
    else:
      embedding = sinusoidal_embedding(value, cfg.embedding_width,
                                       config_key="config.model.embedding_width")
    embedding = embedding.astype(dtype)
    h = x.astype(dtype)
    if cfg.conditioning == "concat":
      h = jnp.concatenate([h, embedding], axis=-1)
    for i in range(cfg.num_layers):
      h = self._dense(cfg.hidden_width, f"hidden_{i}")(h)
      if cfg.conditioning == "add":
        h = h + self._dense(cfg.hidden_width, f"time_proj_{i}")(embedding)
      h = nn.silu(h)
    out = self._dense(cfg.data_dim, "out")(h).astype(jnp.float32)
    if cfg.scale_by_sigma:
      out = out / std.astype(jnp.float32)[:, None]
    return out

  def _dense(self, features: int, name: str) -> nn.Dense:
    cfg = self.config
    return nn.Dense(features, dtype=P.dtype(cfg.dtype), param_dtype=P.dtype(cfg.param_dtype),
                    kernel_init=P.param_init(nn.initializers.lecun_normal(), (None, None)),
                    bias_init=P.param_init(nn.initializers.zeros, (None,)), name=name)


def abstract_params(config: ScoreMLPConfig):
  """Parameter shapes (no memory allocated), with logical-axis boxes removed."""
  points = jax.ShapeDtypeStruct((1, config.data_dim), jnp.float32)
  times = jax.ShapeDtypeStruct((1,), jnp.float32)
  variables = jax.eval_shape(
      lambda x, t: ScoreMLP(config).init(jax.random.key(0), x, t, std=jnp.ones_like(t)),
      points, times)
  return nn.meta.unbox(variables["params"])

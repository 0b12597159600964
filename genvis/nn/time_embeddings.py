"""Embeddings of a scalar noise level (diffusion time t, or log sigma) for score networks.

A score network s(x, t) must know how much noise x carries. Both conventions of Song et al.
2021 ("score_sde") turn one float per example into a vector of sines and cosines:

- `sinusoidal_embedding` (DDPM, DDPM++): the Transformer's position encoding applied to the
  value, with DDPM's frequencies omega_i = 10000^(-i / (d/2 - 1)), i < d/2, so the first
  frequency is 1 and the last 1/10000. It was designed for integer steps 0..999, so
  continuous-time models feed it 999 t (score_sde's VP convention).
- `FourierFeatures` (NCSN++): Gaussian random Fourier features (Tancik et al. 2020), sin and
  cos of 2 pi w_i v with w_i ~ N(0, scale^2) drawn once; score_sde feeds them log sigma with
  scale 16. The frequencies are a parameter (so they are saved with the checkpoint, like the
  reference's) that never trains: the gradient is stopped, and the name "frequencies" keeps
  them out of genvis's weight decay, which only touches kernels and embeddings.

Both return [B, d] float32: these are inputs to the first Dense of a time MLP, and float32
keeps the high frequencies of 999 t exact.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from genvis.errors import UserError
from genvis.nn import partitioning as P


def sinusoidal_embedding(values: jax.Array, dim: int, max_period: float = 10000.0,
                         config_key: str = "config.model.base_width") -> jax.Array:
  """[B] values -> [B, dim]: sin(v omega) in the first half, cos(v omega) in the second
  (a zero column appended when dim is odd), omega_i = max_period^(-i / (dim//2 - 1))."""
  half = dim // 2
  if half < 2:
    raise UserError(f"{config_key}={dim}: a sinusoidal time embedding needs a width >= 4")
  exponents = jnp.arange(half, dtype=jnp.float32) * (-math.log(max_period) / (half - 1))
  angles = values.astype(jnp.float32)[:, None] * jnp.exp(exponents)[None, :]
  embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)
  if dim % 2:
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


class FourierFeatures(nn.Module):
  """[B] values -> [B, 2 * num_features]: sin(2 pi v w), cos(2 pi v w), w ~ N(0, scale^2)."""

  num_features: int
  scale: float = 16.0

  @nn.compact
  def __call__(self, values: jax.Array) -> jax.Array:
    frequencies = self.param("frequencies",
                             P.param_init(nn.initializers.normal(self.scale), (None,)),
                             (self.num_features,), jnp.float32)
    # Fixed random features: drawn at init, never trained.
    frequencies = jax.lax.stop_gradient(frequencies)
    angles = 2 * jnp.pi * values.astype(jnp.float32)[:, None] * frequencies[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)


def check_noise_inputs(batch: int, t, std, *, needs_std: bool, why_std: str, where: str):
  """One time (and, where the model needs it, one marginal std) per example: shapes [B]."""
  if jnp.shape(t) != (batch,):
    raise UserError(f"{where}: t must have shape [B]=[{batch}] (one time per example), got "
                    f"{list(jnp.shape(t))}")
  if std is None:
    if needs_std:
      raise UserError(f"{where}: {why_std} needs the marginal std: call it with "
                      "std=sde.marginal_prob(x, t)[1]")
  elif jnp.shape(std) != (batch,):
    raise UserError(f"{where}: std must have shape [B]=[{batch}] (one per example), got "
                    f"{list(jnp.shape(std))}")


def check_fourier_frequencies(time_embedding: str, time_input: str, time_scale: float,
                              fourier_scale: float):
  """Fourier features of time_scale * t whose frequencies reach thousands of cycles per unit
  of time alias to noise: the trap of keeping the positional default time_scale=999."""
  if time_embedding == "fourier" and time_input == "time" and time_scale * fourier_scale > 1e3:
    raise UserError(f"config.model.time_scale={time_scale} with time_embedding='fourier' "
                    f"(fourier_scale={fourier_scale}) embeds t at ~{time_scale * fourier_scale:.0f}"
                    " cycles per unit of time; use time_scale=1 (or time_input='log_std', as "
                    "NCSN++)")


def noise_level_input(t: jax.Array, std: jax.Array | None, time_input: str,
                      time_scale: float) -> jax.Array:
  """The scalar a time embedding reads, [B]: time_scale * t ("time") or log std ("log_std",
  NCSN++ for the VE SDE, where log sigma(t) is affine in t)."""
  if time_input == "log_std":
    return jnp.log(std.astype(jnp.float32))
  return t.astype(jnp.float32) * time_scale

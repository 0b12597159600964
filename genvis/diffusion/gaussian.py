"""Exact answers for Gaussian (and Gaussian-mixture) data under the linear SDEs of sde.py.

If p_0 = N(m, C) and the kernel is p_0t(x_t | x_0) = N(a(t) x_0, s(t)^2 I), then
p_t = N(a m, a^2 C + s^2 I): the score, the log-density and the best achievable denoising
loss are closed forms. Tests hold samplers, losses and likelihoods against them, and toy 2-D
experiments can sample with the true score (a mixture's p_t is the mixture of its
components' p_t). These helpers use dense [d, d] covariances: they are for small d.

A mean is given flat [d] or in the data's own shape (x.shape[1:]); `x` is [B, ...] with
d = prod(x.shape[1:]); `t` is [B].
"""

import math

import jax
import jax.numpy as jnp

from genvis.diffusion.sde import SDE, ScoreFn, check_times
from genvis.errors import UserError

WEIGHTINGS = ("score_matching", "likelihood")
REDUCTIONS = ("mean", "sum")


def mean_coefficient(sde: SDE, t: jax.Array) -> jax.Array:
  """a(t) [B]: the kernel's mean is linear in x0, so it is the mean of x0 = 1."""
  mean, _ = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
  return mean[:, 0]


def _check_gaussian(mean, cov, num_dims: int | None = None) -> tuple[jax.Array, jax.Array]:
  mean = jnp.asarray(mean, jnp.float32).reshape(-1)
  cov = jnp.asarray(cov, jnp.float32)
  d = mean.shape[0]
  if cov.shape != (d, d):
    raise UserError(f"a Gaussian with mean of {d} dims needs cov of shape [{d}, {d}], got "
                    f"{list(cov.shape)}")
  if num_dims is not None and num_dims != d:
    raise UserError(f"x has {num_dims} dims per example but the Gaussian's mean has {d}")
  return mean, cov


def marginal_gaussian(sde: SDE, mean, cov, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean_t [B, d], cov_t [B, d, d]) of p_t when p_0 = N(mean, cov)."""
  mean, cov = _check_gaussian(mean, cov)
  a = mean_coefficient(sde, t)
  _, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
  eye = jnp.eye(mean.shape[0])
  cov_t = a[:, None, None]**2 * cov + std[:, None, None]**2 * eye
  return a[:, None] * mean, cov_t


def _logp_and_score(sde: SDE, mean, cov, x: jax.Array, t: jax.Array):
  """log N(x; mean_t, cov_t) [B] and its gradient in x [B, d] (flat), via a Cholesky solve."""
  check_times(x, t, "gaussian score")
  flat = x.reshape(x.shape[0], -1)
  mean, cov = _check_gaussian(mean, cov, flat.shape[1])
  mean_t, cov_t = marginal_gaussian(sde, mean, cov, t)
  chol = jnp.linalg.cholesky(cov_t)
  centred = flat - mean_t
  whitened = jax.scipy.linalg.solve_triangular(chol, centred[..., None], lower=True)[..., 0]
  precision_centred = jax.scipy.linalg.solve_triangular(
      jnp.swapaxes(chol, -1, -2), whitened[..., None], lower=False)[..., 0]
  log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
  d = flat.shape[1]
  logp = -0.5 * (d * math.log(2 * math.pi) + log_det + jnp.sum(whitened**2, axis=-1))
  return logp, -precision_centred


def gaussian_logp(sde: SDE, mean, cov):
  """fn(x [B, ...], t [B]) -> log p_t(x) [B] when p_0 = N(mean, cov)."""
  return lambda x, t: _logp_and_score(sde, mean, cov, x, t)[0]


def gaussian_score(sde: SDE, mean, cov) -> ScoreFn:
  """fn(x [B, ...], t [B]) -> grad_x log p_t(x) [B, ...] when p_0 = N(mean, cov)."""
  return lambda x, t: _logp_and_score(sde, mean, cov, x, t)[1].reshape(x.shape)


def gaussian_mixture_logp(sde: SDE, weights, means, covs):
  """fn(x, t) -> log p_t(x) [B] when p_0 = sum_k weights[k] N(means[k], covs[k]).

  weights [K] (normalised here), means [K, d], covs [K, d, d].
  """
  weights = jnp.asarray(weights, jnp.float32)
  means = jnp.asarray(means, jnp.float32)
  covs = jnp.asarray(covs, jnp.float32)
  if means.ndim != 2 or covs.shape != means.shape + means.shape[-1:] or (
      weights.shape != means.shape[:1]):
    raise UserError(f"a mixture needs weights [K], means [K, d], covs [K, d, d]; got "
                    f"{list(weights.shape)}, {list(means.shape)}, {list(covs.shape)}")
  log_weights = jnp.log(weights / jnp.sum(weights))

  def logp(x, t):
    per_component = jnp.stack(
        [_logp_and_score(sde, means[k], covs[k], x, t)[0] for k in range(means.shape[0])],
        axis=-1)
    return jax.nn.logsumexp(per_component + log_weights, axis=-1)

  return logp


def gaussian_mixture_score(sde: SDE, weights, means, covs) -> ScoreFn:
  """fn(x, t) -> grad_x log p_t(x) for the mixture (examples are independent, so the
  gradient of the batch's summed log-density is each example's score)."""
  logp = gaussian_mixture_logp(sde, weights, means, covs)
  return lambda x, t: jax.grad(lambda y: jnp.sum(logp(y, t)))(x)


def sample_gaussian(rng: jax.Array, mean, cov, num: int) -> jax.Array:
  """num draws from N(mean, cov): [num, d] (flat)."""
  mean, cov = _check_gaussian(mean, cov)
  noise = jax.random.normal(rng, (num, mean.shape[0]))
  return mean + noise @ jnp.linalg.cholesky(cov).T


def denoising_loss_floor(sde: SDE, cov, t: jax.Array, weighting: str = "score_matching",
                         reduce: str = "mean") -> jax.Array:
  """The smallest denoising score-matching loss at time t [B] for data N(m, cov): [B].

  The loss is lambda(t) E||s(x_t) - c||^2 with c = grad log p_0t(x_t | x_0) = -z / s(t) the
  conditional score. Since E[c | x_t] is the marginal score, the best s is the marginal
  score, and what is left is the conditional score's variance around it:
  E||c||^2 - E||grad log p_t||^2 = d / s^2 - tr(Sigma_t^{-1}), Sigma_t = a^2 C + s^2 I. Per
  eigenvalue c_i of C that is 1/s^2 - 1/(a^2 c_i + s^2) = a^2 c_i / (s^2 (a^2 c_i + s^2)), so
  - score matching (lambda = s^2): sum_i a^2 c_i / (a^2 c_i + s^2);
  - likelihood (lambda = g^2): g^2 / s^2 times that.
  reduce="mean" divides by d (the loss's mean over dims), "sum" does not.
  """
  if weighting not in WEIGHTINGS or reduce not in REDUCTIONS:
    raise UserError(f"weighting={weighting!r}, reduce={reduce!r}: expected one of "
                    f"{WEIGHTINGS} and one of {REDUCTIONS}")
  cov = jnp.asarray(cov, jnp.float32)
  eigenvalues = jnp.linalg.eigvalsh(cov)
  a = mean_coefficient(sde, t)[:, None]
  _, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
  var = std[:, None]**2
  signal = a**2 * eigenvalues
  floor = jnp.sum(signal / (signal + var), axis=-1)
  if weighting == "likelihood":
    _, diffusion = sde.sde(jnp.ones((t.shape[0], 1)), t)
    floor = floor * diffusion**2 / var[:, 0]
  return floor / eigenvalues.shape[0] if reduce == "mean" else floor


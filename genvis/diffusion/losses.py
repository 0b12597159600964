"""Training losses of score-based diffusion, continuous and discrete.

- `dsm_loss`: denoising score matching over continuous time (Song et al. 2021, eq. 7): with
  t ~ U(eps, T), x_t = a(t) x_0 + s(t) z, the conditional score is -z / s and the loss is
  lambda(t) ||score(x_t, t) + z / s||^2, with lambda = s^2 ("score_matching", score_sde's
  default: the residual is s * score + z, of unit scale at every t) or lambda = g^2
  ("likelihood": the weighting under which the loss bounds the negative log-likelihood;
  Song et al. 2021b). Its floor for Gaussian data is gaussian.denoising_loss_floor.
- `ddpm_loss`: DDPM's noise prediction on the VP SDE's N-step discretisation (Ho et al.
  2020): ||eps_hat(x_i, t_i) - z||^2 with x_i = sqrt(alpha-bar_i) x_0 + sqrt(1 - alpha-bar_i) z.
- `smld_loss`: NCSN's loss on the VE SDE's N noise levels (Song & Ermon 2019):
  sigma_i^2 ||score(x_0 + sigma_i z, t_i) + z / sigma_i||^2.
- `flow_matching_loss`: the rectified-flow velocity regression ||v_hat(x_t, t) - (z - x_0)||^2
  with uniform or logit-normal t (SD3, Esser et al. 2024).

Discrete losses call the network at the time t_i = i T / (N - 1) of the drawn step i (not at
the integer i), so a network conditioned on continuous time serves both: `sde.timestep_index`
maps t_i back to i. Each function returns the batch mean of per-example losses; a
per-example loss is a mean ("mean", score_sde's reduce_mean=True) or a sum ("sum") over an
example's dims. The step's `rng` is split inside, so a loss is a pure function of
(params, batch, rng).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from genvis.diffusion.gaussian import REDUCTIONS, WEIGHTINGS
from genvis.diffusion.sde import (SDE, RectifiedFlow, ScoreFn, SubVPSDE, VESDE, VPSDE,
                                  broadcast_to_data, check_output_shape)
from genvis.errors import UserError

TIME_SAMPLINGS = ("uniform", "logit_normal")


def _reduce_per_example(values: jax.Array, reduce: str) -> jax.Array:
  axes = tuple(range(1, values.ndim))
  return jnp.mean(values, axis=axes) if reduce == "mean" else jnp.sum(values, axis=axes)


def _check(x0: jax.Array, reduce: str, where: str):
  if x0.ndim < 2:
    raise UserError(f"{where}: x0 must be [B, ...] with at least one data dim, got shape "
                    f"{list(x0.shape)}")
  if reduce not in REDUCTIONS:
    raise UserError(f"{where}: reduce={reduce!r}, expected one of {REDUCTIONS}")


def dsm_per_example(sde: SDE, score_fn: ScoreFn, x0: jax.Array, t: jax.Array,
                    noise: jax.Array, *, weighting: str = "score_matching",
                    reduce: str = "mean") -> jax.Array:
  """The denoising score-matching loss of each example at given t [B] and z [B, ...]: [B].
  t must be > 0 where the SDE's std vanishes at 0 (VP, sub-VP): the loss divides by it."""
  _check(x0, reduce, "dsm_loss")
  if weighting not in WEIGHTINGS:
    raise UserError(f"dsm_loss: weighting={weighting!r}, expected one of {WEIGHTINGS}")
  mean, std = sde.marginal_prob(x0, t)
  check_output_shape(score_fn, x0, t, role="score", where="dsm_loss")
  std_x = broadcast_to_data(std, x0)
  score = score_fn(mean + std_x * noise, t)
  if weighting == "score_matching":
    return _reduce_per_example(jnp.square(score * std_x + noise), reduce)
  _, diffusion = sde.sde(x0, t)
  return _reduce_per_example(jnp.square(score + noise / std_x), reduce) * diffusion**2


def dsm_loss(sde: SDE, score_fn: ScoreFn, x0: jax.Array, rng: jax.Array, *,
             weighting: str = "score_matching", reduce: str = "mean",
             eps: float = 1e-5) -> jax.Array:
  """Continuous-time DSM, t ~ U(eps, T) per example (0 < eps < T); the batch mean (a scalar)."""
  _check(x0, reduce, "dsm_loss")
  if weighting not in WEIGHTINGS:
    raise UserError(f"dsm_loss: weighting={weighting!r}, expected one of {WEIGHTINGS}")
  # eps > 0: VP's and sub-VP's std vanishes at t = 0, where the likelihood weighting's
  # noise / std and a scale-by-sigma network's division by std are infinite.
  if not 0 < eps < sde.T:
    raise UserError(f"dsm_loss: eps={eps} must be in (0, T={sde.T})")
  t_rng, noise_rng = jax.random.split(rng)
  t = jax.random.uniform(t_rng, (x0.shape[0],), minval=eps, maxval=sde.T)
  noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  return jnp.mean(dsm_per_example(sde, score_fn, x0, t, noise, weighting=weighting,
                                  reduce=reduce))


def _draw_steps(sde: SDE, rng: jax.Array, x0: jax.Array):
  """(step index [B], its time t_i [B], standard noise [B, ...])."""
  index_rng, noise_rng = jax.random.split(rng)
  index = jax.random.randint(index_rng, (x0.shape[0],), 0, sde.num_scales)
  return index, sde.timestep_time(index), jax.random.normal(noise_rng, x0.shape, x0.dtype)


def ddpm_loss(sde: VPSDE, noise_fn: Callable, x0: jax.Array, rng: jax.Array, *,
              reduce: str = "mean") -> jax.Array:
  """DDPM noise prediction: noise_fn(x_i, t_i) should return the z that made x_i."""
  _check(x0, reduce, "ddpm_loss")
  if not isinstance(sde, VPSDE) or isinstance(sde, SubVPSDE):
    raise UserError(f"ddpm_loss needs a VPSDE (DDPM is its discretisation), got "
                    f"{type(sde).__name__}")
  index, t, noise = _draw_steps(sde, rng, x0)
  check_output_shape(noise_fn, x0, t, role="noise prediction", where="ddpm_loss")
  alpha_bar = broadcast_to_data(jnp.asarray(sde.alphas_cumprod(), jnp.float32)[index], x0)
  x_t = jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1.0 - alpha_bar) * noise
  return jnp.mean(_reduce_per_example(jnp.square(noise_fn(x_t, t) - noise), reduce))


def smld_loss(sde: VESDE, score_fn: ScoreFn, x0: jax.Array, rng: jax.Array, *,
              reduce: str = "mean") -> jax.Array:
  """NCSN's sigma^2-weighted DSM on the VE SDE's discrete noise levels."""
  _check(x0, reduce, "smld_loss")
  if not isinstance(sde, VESDE):
    raise UserError(f"smld_loss needs a VESDE (SMLD is its discretisation), got "
                    f"{type(sde).__name__}")
  index, t, noise = _draw_steps(sde, rng, x0)
  check_output_shape(score_fn, x0, t, role="score", where="smld_loss")
  sigma = broadcast_to_data(sde.discrete_sigmas()[index], x0)
  # sigma^2 ||score + z / sigma||^2 = ||sigma * score + z||^2
  residual = sigma * score_fn(x0 + sigma * noise, t) + noise
  return jnp.mean(_reduce_per_example(jnp.square(residual), reduce))


def flow_matching_loss(flow: RectifiedFlow, velocity_fn: Callable, x0: jax.Array,
                       rng: jax.Array, *, reduce: str = "mean",
                       time_sampling: str = "uniform") -> jax.Array:
  """Rectified-flow regression of the velocity z - x0 at x_t = (1 - t) x0 + t z.

  time_sampling "logit_normal" draws t = sigmoid(n), n ~ N(0, 1): SD3's choice, which puts
  more steps in the middle of the path, where the velocity is hardest to predict. Unlike
  dsm_loss it needs no eps: t = 0 is harmless, as the target z - x0 divides by nothing.
  """
  _check(x0, reduce, "flow_matching_loss")
  if not isinstance(flow, RectifiedFlow):
    raise UserError(f"flow_matching_loss needs a RectifiedFlow, got {type(flow).__name__}")
  if time_sampling not in TIME_SAMPLINGS:
    raise UserError(f"flow_matching_loss: time_sampling={time_sampling!r}, expected one of "
                    f"{TIME_SAMPLINGS}")
  t_rng, noise_rng = jax.random.split(rng)
  if time_sampling == "uniform":
    t = jax.random.uniform(t_rng, (x0.shape[0],))
  else:
    t = jax.nn.sigmoid(jax.random.normal(t_rng, (x0.shape[0],)))
  noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  mean, std = flow.marginal_prob(x0, t)
  check_output_shape(velocity_fn, x0, t, role="velocity", where="flow_matching_loss")
  x_t = mean + broadcast_to_data(std, x0) * noise
  residual = velocity_fn(x_t, t) - flow.velocity_target(x0, noise)
  return jnp.mean(_reduce_per_example(jnp.square(residual), reduce))

"""Exact log-likelihoods through the probability-flow ODE, in nats and bits/dim.

The ODE dx/dt = f~(x, t) = f(x, t) - g(t)^2 score(x, t) / 2 carries p_eps to p_T, so by the
instantaneous change of variables (Chen et al. 2018; Song et al. 2021, appendix D.2)

  log p_eps(x) = log p_T(x(T)) + int_eps^T div f~(x(t), t) dt,

integrated here as one augmented state (x, delta_logp) with diffrax (Tsit5, adaptive steps
from a PID controller on rtol / atol), all inside whatever jit the caller wraps it in.

The divergence is a trace of the drift's Jacobian. One `jax.vjp` of the drift gives the
drift and a pullback that costs about one more drift evaluation per probe v, and
E[v^T J v] = tr J for probes with E[v v^T] = I (Hutchinson 1990; Skilling 1989):
Rademacher (+-1, lowest variance; exact when J is diagonal) or Gaussian. As in FFJORD and
score_sde, the probes are drawn once per solve, so the ODE stays smooth for the adaptive
solver. The "exact" option uses d probes, sqrt(d) times the basis vectors: their average of
v^T J v is exactly sum_i J_ii, for small d (tests, 2-D toys).

Bits/dim of discrete data. Data with K levels is scaled to [low, high] = [-1, 1] with level k
at low + k w, w = (high - low) / (K - 1) (genvis's convention: uint8 pixel p -> p / 127.5 - 1,
digits g -> g / 8 - 1). A continuous density p gives level k the mass of its bin,
P(k) = int_{|y - x_k| < w/2} p(y) dy, and by Jensen, with u ~ U(-w/2, w/2)^d,
  -log P(k) <= E_u[-log p(x_k + u)] - d log w.
So the model's bits/dim is -log2 p(dequantised x) / d + log2(1 / w): the offset is
log2((K - 1) / (high - low)) bits/dim (6.994 for 256 levels; score_sde's 7 = log2(256 / 2)
is for bins of width 2/256 tiling [-1, 1], i.e. level k at -1 + (2k + 1) / 256). Check: a
density uniform on the K bins, [low - w/2, high + w/2]^d, has -log2 p / d = log2(K w) and
so log2 K bits/dim, the entropy of K equally likely levels.
"""

import math
from typing import Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from genvis.diffusion.sde import SDE, ScoreFn, check_output_shape
from genvis.errors import UserError

DIVERGENCES = ("rademacher", "gaussian", "exact")
EXACT_TRACE_MAX_DIMS = 1024  # d probes per drift evaluation: beyond this, use Hutchinson.


def _as_float_data(x, where: str) -> jax.Array:
  """x as floating data of at least float32. Integer x is refused: it is almost surely raw
  levels (uint8 pixels) not yet scaled to [low, high], and as the solver's dtype it would
  truncate t. bf16 is widened: its 8-bit mantissa would round the solver's time, the
  adaptive steps' tolerance and a bin's dequantisation noise away."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise UserError(f"{where}: x has dtype {x.dtype}; expected floating data (scale integer "
                    "levels first, e.g. uint8 pixels p -> p / 127.5 - 1)")
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


class LikelihoodResult(NamedTuple):
  """What one probability-flow solve measured, per example."""
  logp: jax.Array        # [B] log p_eps(x) in nats = prior_logp + delta_logp
  prior_logp: jax.Array  # [B] log prior(z)
  delta_logp: jax.Array  # [B] int_eps^T div(drift) dt
  z: jax.Array           # [B, ...] x carried to t = T
  num_steps: jax.Array   # solver steps taken (accepted + rejected; ~6 drift evaluations each)


def divergence_probes(rng: jax.Array, x: jax.Array, kind: str = "rademacher",
                      num_probes: int = 1) -> jax.Array:
  """Probes v [P, B, ...] with E[v v^T] = I per example; "exact" gives the d scaled basis
  vectors (P = d), whose average of v^T J v is tr J exactly."""
  if kind not in DIVERGENCES:
    raise UserError(f"divergence={kind!r}, expected one of {DIVERGENCES}")
  num_dims = math.prod(x.shape[1:])
  if kind == "exact":
    if num_dims > EXACT_TRACE_MAX_DIMS:
      raise UserError(f"divergence='exact' needs {num_dims} drift pullbacks per step for x "
                      f"{list(x.shape)}; above {EXACT_TRACE_MAX_DIMS} dims use 'rademacher'")
    basis = jnp.eye(num_dims, dtype=x.dtype) * math.sqrt(num_dims)
    basis = basis.reshape((num_dims, 1) + x.shape[1:])
    return jnp.broadcast_to(basis, (num_dims,) + x.shape)
  if num_probes < 1:
    raise UserError(f"num_probes={num_probes}: need at least one Hutchinson probe")
  shape = (num_probes,) + x.shape
  if kind == "rademacher":
    return jax.random.rademacher(rng, shape, dtype=x.dtype)
  return jax.random.normal(rng, shape, x.dtype)


def drift_and_divergence(drift_fn: Callable, x: jax.Array, t: jax.Array,
                         probes: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(drift_fn(x, t) [B, ...], mean over probes of v^T J v [B]) from one jax.vjp.

  Examples must not interact inside drift_fn (no batch statistics): the pullback of the
  batch then holds each example's v^T J separately.
  """
  drift, pullback = jax.vjp(lambda y: drift_fn(y, t), x)
  pulled = jax.vmap(lambda v: pullback(v.astype(drift.dtype))[0])(probes)  # [P, B, ...]
  per_probe = jnp.sum((pulled * probes).reshape(probes.shape[:2] + (-1,)), axis=-1)
  return drift, jnp.mean(per_probe, axis=0)


def ode_log_likelihood(sde: SDE, score_fn: ScoreFn, x: jax.Array, rng: jax.Array, *,
                       divergence: str = "rademacher", num_probes: int = 1,
                       rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                       max_steps: int = 4096) -> LikelihoodResult:
  """log p_eps(x) [B] (nats) under the probability-flow ODE of sde driven by score_fn.

  Call it inside jax.jit (build score_fn from the parameters there, so they are traced, not
  baked in). With divergence "rademacher" / "gaussian" the estimate is unbiased, averaged
  over num_probes probes; "exact" is the trace itself. x must be floating (integer levels are
  refused, bf16 is widened to float32: `_as_float_data`).
  """
  x = _as_float_data(x, "ode_log_likelihood")
  if x.ndim < 2:
    raise UserError(f"ode_log_likelihood: x must be [B, ...] with at least one data dim, got "
                    f"{list(x.shape)}")
  if not 0 < eps < sde.T:
    raise UserError(f"ode_log_likelihood: eps={eps} must be in (0, T={sde.T})")
  batch = x.shape[0]
  check_output_shape(score_fn, x, role="score", where="ode_log_likelihood")
  probes = divergence_probes(rng, x, divergence, num_probes)
  drift_fn = sde.ode_drift(score_fn)

  def augmented(t, state, args):
    del args
    x_t, _ = state
    return drift_and_divergence(drift_fn, x_t, jnp.full((batch,), t, x.dtype), probes)

  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(augmented), diffrax.Tsit5(), t0=eps, t1=sde.T, dt0=None,
      y0=(x, jnp.zeros((batch,), x.dtype)),
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps)
  z, delta_logp = solution.ys[0][-1], solution.ys[1][-1]
  prior_logp = sde.prior_logp(z)
  return LikelihoodResult(prior_logp + delta_logp, prior_logp, delta_logp, z,
                          solution.stats["num_steps"])


def bin_width(num_levels: int, low: float = -1.0, high: float = 1.0) -> float:
  """Spacing w of K levels spread over [low, high], ends included."""
  if num_levels < 2 or not high > low:
    raise UserError(f"num_levels={num_levels} over [{low}, {high}]: need >= 2 levels and "
                    "high > low")
  return (high - low) / (num_levels - 1)


def dequantize(rng: jax.Array, x: jax.Array, num_levels: int, low: float = -1.0,
               high: float = 1.0) -> jax.Array:
  """x on the K-level grid plus uniform noise over its bin, U(-w/2, w/2) per dim."""
  x = _as_float_data(x, "dequantize")
  width = bin_width(num_levels, low, high)
  return x + width * (jax.random.uniform(rng, x.shape, x.dtype) - 0.5)


def bits_per_dim_offset(num_levels: int, low: float = -1.0, high: float = 1.0) -> float:
  """-log2(w): what a bin's width adds to a continuous density's bits/dim (module docs)."""
  return -math.log2(bin_width(num_levels, low, high))


def bits_per_dim_from_logp(logp: jax.Array, num_dims: int, num_levels: int | None = None,
                           low: float = -1.0, high: float = 1.0) -> jax.Array:
  """-logp / (d ln 2), plus the bin offset when the data has num_levels levels."""
  bits = -logp / (num_dims * math.log(2.0))
  return bits if num_levels is None else bits + bits_per_dim_offset(num_levels, low, high)


def ode_bits_per_dim(sde: SDE, score_fn: ScoreFn, x: jax.Array, rng: jax.Array, *,
                     num_levels: int | None = None, low: float = -1.0, high: float = 1.0,
                     **solver_kwargs) -> tuple[jax.Array, LikelihoodResult]:
  """Bits/dim [B] of x under the probability-flow ODE.

  With num_levels, x is discrete data on the K-level grid over [low, high]: it is dequantised
  with uniform noise and the bin offset is added, so the figure bounds the discrete data's
  negative log-likelihood. Without it, x is continuous and the figure is -log2 p_eps(x) / d.
  solver_kwargs go to ode_log_likelihood (divergence, num_probes, rtol, atol, eps, max_steps).
  """
  x = _as_float_data(x, "ode_bits_per_dim")
  dequantize_rng, probe_rng = jax.random.split(rng)
  if num_levels is not None:
    x = dequantize(dequantize_rng, x, num_levels, low, high)
  result = ode_log_likelihood(sde, score_fn, x, probe_rng, **solver_kwargs)
  bits = bits_per_dim_from_logp(result.logp, math.prod(x.shape[1:]), num_levels, low, high)
  return bits, result

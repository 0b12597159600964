"""Samplers for score-based diffusion: predictor-corrector and the probability-flow ODE.

Song et al. 2021 ("Score-Based Generative Modeling through SDEs", section 4 and appendix G)
sample by running an SDE of sde.py backwards from its prior with a score function:

- predictor-corrector (`pc_sampler`): a predictor moves x from t_i to t_{i+1} < t_i
  (Euler-Maruyama on the reverse SDE, the reverse-diffusion step, or ancestral sampling),
  a corrector (Langevin MCMC with a step set by a signal-to-noise ratio) pulls x towards
  p_{t_i} before it. Any predictor combines with any corrector, "none" included.
- the probability-flow ODE dx/dt = f - g^2 s / 2, deterministic, with fixed steps (Euler,
  Heun, RK4: `ode_sampler`) or adaptive ones (diffrax's Tsit5 with a PID controller on
  rtol / atol: `adaptive_ode_sampler`, which reports how many score evaluations it used).

Every sampler is one jit-compiled function with its loop inside (`lax.fori_loop`, or
diffrax's while loop), so no step goes back to the host. The number of steps, the SNR, the
corrector steps, eps and the tolerances are traced values: changing them does not recompile.
The SDE, the shape, the method names and the number of trajectory snapshots are static.
Each sampler returns `Samples(x, nfe, trajectory)`: nfe counts score evaluations (each on
the whole batch); `num_snapshots=K` keeps K states, x_T first and the result last, for
trajectory pictures.

Time grid. The PC samplers follow score_sde: the score is evaluated at N times
t_i = t_0 - i (t_0 - eps) / (N - 1), i = 0..N-1, and step i goes from t_i to t_{i+1}, with
t_N = 0 (the last step, from eps, denoises). t_0 = `sde.sampling_start` is T, except for
rectified flow: its kernel forgets x_0 at T (a(T) = 0), so no score-driven step can start
there, and its grid starts at T - end_gap (sde.py). The ODE samplers integrate from T to eps.

Discretisation on any grid. score_sde's reverse-diffusion and ancestral steps are tied to
the SDE's own N = num_scales grid (SMLD for VE, DDPM for VP, through score_sde's
`discretize`, which genvis does not have). Here both use the exact Gaussian transition of
the linear SDE over the sampler's own step [s, t]: x_t | x_s ~ N(a_ts x_s, v_ts I) with
a_ts = a(t) / a(s) and v_ts = s(t)^2 - a_ts^2 s(s)^2 (a, s: `SDE.marginal_prob`'s mean
coefficient and std). For VE that is SMLD's
sigma_t^2 - sigma_s^2 and for VP DDPM's beta = 1 - alpha-bar_t / alpha-bar_s, so on the
num_scales grid they are score_sde's steps (DDPM's beta_i up to O(1/N^2)), and on any other
grid they stay consistent, so the step count is free. t = 0 means clean data: s(0) = 0
(VE's marginal std would be sigma_min there; SMLD's chain ends at sigma = 0). The grid is
score_sde's up to the eps offset, so with N = num_scales the steps match its samplers
(tests/diffusion/test_samplers.py holds the reverse-diffusion step to SMLD's and DDPM's).

A score function is `score_fn(x [B, ...], t [B]) -> [B, ...]` (another output shape is a
UserError, raised while jit traces the sampler). The samplers hand it to jit as a pytree, and
jit keys its cache on a plain function's identity: build the function once, not per call,
and to swap network parameters without recompiling pass `jax.tree_util.Partial(fn, params)`
(the params are then traced).
"""

import functools
from typing import Callable, NamedTuple

import diffrax
import jax
import jax.numpy as jnp

from genvis.diffusion.sde import SDE, broadcast_to_data, check_output_shape
from genvis.errors import UserError


class Samples(NamedTuple):
  """What a sampler returns."""
  x: jax.Array                  # [B, ...] the samples
  nfe: jax.Array                # int32 []: score evaluations (each on the whole batch)
  trajectory: jax.Array | None  # [K, B, ...]: K snapshots from x_T to x, or None


def as_score_pytree(score_fn: Callable) -> jax.tree_util.Partial:
  """score_fn as a pytree that jit accepts as an argument (see the module docstring)."""
  if isinstance(score_fn, jax.tree_util.Partial):
    return score_fn
  if not callable(score_fn):
    raise UserError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn)}")
  return jax.tree_util.Partial(score_fn)


def _check_score(score_fn, x, where: str):
  """score_fn(x, t [B]) must return x's shape. The samplers call this inside their jit, so it
  runs while tracing, once per compilation, and fails there rather than in the loop."""
  check_output_shape(score_fn, x, role="score", where=where)


def kernel(sde: SDE, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(a(t), s(t)) [B]: p_0t(x_t | x_0) = N(a x_0, s^2 I); at t <= 0 exactly (1, 0)."""
  mean, std = sde.marginal_prob(jnp.ones((t.shape[0], 1), t.dtype), t)
  clean = t <= 0
  return jnp.where(clean, 1.0, mean[:, 0]), jnp.where(clean, 0.0, std)


def transition(sde: SDE, t: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(a_ts, v_ts) [B] of the forward step x_t | x_s ~ N(a_ts x_s, v_ts I), s < t."""
  a_t, s_t = kernel(sde, t)
  a_s, s_s = kernel(sde, s)
  a_ts = a_t / a_s
  return a_ts, jnp.maximum(s_t**2 - (a_ts * s_s)**2, 0.0)


# Predictors: (sde, score_fn, x, t, s, rng) -> (x at s, its mean before the last noise).


def euler_maruyama(sde, score_fn, x, t, s, rng):
  """x_s = x_t - [f - g^2 score] h + g sqrt(h) z, h = t - s (reverse-time Euler-Maruyama)."""
  drift, diffusion = sde.reverse(score_fn).sde(x, t)
  x_mean = x - drift * broadcast_to_data(t - s, x)
  noise = broadcast_to_data(diffusion * jnp.sqrt(t - s), x) * jax.random.normal(rng, x.shape)
  return x_mean + noise, x_mean


def reverse_diffusion(sde, score_fn, x, t, s, rng):
  """The forward step x_t = x_s + f + G z with f = (a_ts - 1) x, G^2 = v_ts, reversed:
  x_s = x_t - f + G^2 score + G z (score_sde's ReverseDiffusionPredictor)."""
  a_ts, v_ts = transition(sde, t, s)
  x_mean = (2.0 - broadcast_to_data(a_ts, x)) * x + broadcast_to_data(v_ts, x) * score_fn(x, t)
  noise = broadcast_to_data(jnp.sqrt(v_ts), x) * jax.random.normal(rng, x.shape)
  return x_mean + noise, x_mean


def ancestral(sde, score_fn, x, t, s, rng):
  """A draw from the posterior q(x_s | x_t, x0_hat), x0_hat = (x_t + s_t^2 score) / a_t
  (Tweedie): with v = v_ts, mean = a_ts s_s^2 / s_t^2 x_t + a_s v / s_t^2 x0_hat and variance
  v s_s^2 / s_t^2. For VE this is SMLD's ancestral step x + (sigma_t^2 - sigma_s^2) score,
  for VP DDPM's mean (x + beta score) / sqrt(1 - beta) with its posterior variance
  beta-tilde (score_sde draws with beta; both are DDPM's choices)."""
  a_ts, v_ts = transition(sde, t, s)
  _, s_t = kernel(sde, t)
  _, s_s = kernel(sde, s)
  keep, step = s_s**2 / s_t**2, v_ts / (a_ts * s_t**2)  # a_s / a_t = 1 / a_ts
  x_mean = (broadcast_to_data(a_ts * keep, x) * x
            + broadcast_to_data(step, x) * (x + broadcast_to_data(s_t**2, x) * score_fn(x, t)))
  noise = broadcast_to_data(jnp.sqrt(v_ts * keep), x) * jax.random.normal(rng, x.shape)
  return x_mean + noise, x_mean


PREDICTORS = {  # name -> (step, score evaluations per step)
    "euler_maruyama": (euler_maruyama, 1),
    "reverse_diffusion": (reverse_diffusion, 1),
    "ancestral": (ancestral, 1),
    "none": (None, 0),
}


# Correctors: (sde, score_fn, x, t, s, rng, snr, num_steps) -> (x, mean before the noise).


def _langevin_steps(score_fn, x, t, rng, num_steps, step_size_fn):
  """x <- x + e score + sqrt(2 e) z, num_steps times at fixed t; e = step_size_fn(score, z)."""
  def one_step(i, carry):
    x, _ = carry
    score = score_fn(x, t)
    noise = jax.random.normal(jax.random.fold_in(rng, i), x.shape)
    step = step_size_fn(score, noise)
    x_mean = x + step * score
    return x_mean + jnp.sqrt(2.0 * step) * noise, x_mean
  return jax.lax.fori_loop(0, num_steps, one_step, (x, x))


def _per_example_norm(v):
  return jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1)


def langevin(sde, score_fn, x, t, s, rng, snr, num_steps):
  """score_sde's LangevinCorrector: e = 2 alpha (snr ||z|| / ||score||)^2 with the norms
  averaged over the batch, alpha = a(t)^2 / a(s)^2 (1 - beta_i for VP, 1 for VE)."""
  a_ts, _ = transition(sde, t, s)
  alpha = a_ts[0]**2  # one t per call

  def step_size(score, noise):
    grad_norm = jnp.maximum(jnp.mean(_per_example_norm(score)), 1e-20)
    return 2.0 * alpha * (snr * jnp.mean(_per_example_norm(noise)) / grad_norm)**2
  return _langevin_steps(score_fn, x, t, rng, num_steps, step_size)


def annealed_langevin(sde, score_fn, x, t, s, rng, snr, num_steps):
  """score_sde's AnnealedLangevinDynamics (NCSN): e = 2 alpha (snr s(t))^2."""
  a_ts, _ = transition(sde, t, s)
  _, s_t = kernel(sde, t)
  step = broadcast_to_data(2.0 * a_ts**2 * (snr * s_t)**2, x)
  return _langevin_steps(score_fn, x, t, rng, num_steps, lambda score, noise: step)


CORRECTORS = {"langevin": langevin, "ald": annealed_langevin, "none": None}


def _record(trajectory, snapshot_steps, steps_done, value):
  """Writes value into the snapshots due after steps_done steps (none if trajectory is None)."""
  if trajectory is None:
    return None
  due = broadcast_to_data(snapshot_steps == steps_done, trajectory)
  return jnp.where(due, value[None], trajectory)


def _start_trajectory(num_snapshots, num_steps, x):
  """K snapshots at steps floor(j N / (K - 1)), j = 0..K-1: x_T first, the result last."""
  if not num_snapshots:
    return None, None
  steps = jnp.arange(num_snapshots) * num_steps // (num_snapshots - 1)
  trajectory = jnp.zeros((num_snapshots, *x.shape), x.dtype)
  return _record(trajectory, steps, 0, x), steps


@functools.partial(jax.jit, static_argnames=(
    "sde", "shape", "predictor", "corrector", "denoise", "num_snapshots", "constrain"))
def _pc_sample(sde, score_fn, rng, num_steps, snr, n_corrector_steps, eps, *, shape,
               predictor, corrector, denoise, num_snapshots, constrain=None, constraint=None):
  """The PC loop. `constrain(sde, constraint, x, x_mean, t, rng) -> (x, x_mean)` (static,
  with traced `constraint` data) runs after every update: controllable.py's inpainting."""
  prior_rng, loop_rng = jax.random.split(rng)
  x = sde.prior_sample(prior_rng, shape)
  _check_score(score_fn, x, "pc_sampler")
  batch = shape[0]
  start = sde.sampling_start  # T, or rectified flow's T - end_gap (module docstring)
  spacing = (start - eps) / jnp.maximum(num_steps - 1, 1)
  predict, predictor_nfe = PREDICTORS[predictor]
  correct = CORRECTORS[corrector]

  def time(i):  # [B]; t_N = 0
    return jnp.where(i < num_steps, start - i * spacing, 0.0) * jnp.ones((batch,), x.dtype)

  def apply_constraint(x, x_mean, t, rng):
    if constrain is None:
      return x, x_mean
    return constrain(sde, constraint, x, x_mean, t, rng)

  x, _ = apply_constraint(x, x, time(0), jax.random.fold_in(prior_rng, 1))
  trajectory, snapshot_steps = _start_trajectory(num_snapshots, num_steps, x)

  def step(i, carry):
    x, x_mean, trajectory = carry
    t, s = time(i), time(i + 1)
    corrector_rng, predictor_rng, *constraint_rngs = jax.random.split(
        jax.random.fold_in(loop_rng, i), 4)
    if correct is not None:
      x, x_mean = correct(sde, score_fn, x, t, s, corrector_rng, snr, n_corrector_steps)
      x, x_mean = apply_constraint(x, x_mean, t, constraint_rngs[0])
    if predict is not None:
      x, x_mean = predict(sde, score_fn, x, t, s, predictor_rng)
      x, x_mean = apply_constraint(x, x_mean, s, constraint_rngs[1])
    trajectory = _record(trajectory, snapshot_steps, i + 1, x_mean if denoise else x)
    return x, x_mean, trajectory

  x, x_mean, trajectory = jax.lax.fori_loop(0, num_steps, step, (x, x, trajectory))
  corrector_nfe = n_corrector_steps if correct is not None else 0
  nfe = jnp.asarray(num_steps * (predictor_nfe + corrector_nfe), jnp.int32)
  return Samples(x_mean if denoise else x, nfe, trajectory)


def _concrete(value):
  """value as a Python number, or None when it is traced (checks then happen in the loop)."""
  if isinstance(value, jax.core.Tracer):
    return None
  return value.item() if hasattr(value, "item") else value


def _check_count(name: str, value, minimum: int):
  """An integer >= minimum (checked when concrete); returns it as an int, or the tracer."""
  concrete = _concrete(value)
  if concrete is None:
    return value
  if isinstance(concrete, bool) or int(concrete) != concrete or concrete < minimum:
    raise UserError(f"{name}={concrete}: expected an integer >= {minimum}")
  return int(concrete)


def check_common(sde: SDE, shape, num_steps, eps, min_steps: int, num_snapshots: int = 0):
  """Validates what every sampler takes; returns (shape, num_steps, eps)."""
  if not isinstance(sde, SDE):
    raise UserError(f"sde must be a genvis.diffusion.sde.SDE, got {type(sde).__name__}")
  shape = tuple(int(d) for d in shape)
  if len(shape) < 2 or min(shape) < 1:
    raise UserError(f"sample shape {list(shape)}: expected [batch, ...data dims], all >= 1")
  num_steps = _check_count("num_steps", num_steps, min_steps)
  eps = sde.eps if eps is None else eps
  if _concrete(eps) is not None and not 0 < _concrete(eps) < sde.T:
    raise UserError(f"eps={eps}: the smallest sampling time must be in (0, T={sde.T})")
  if num_snapshots and num_snapshots < 2:
    raise UserError(f"num_snapshots={num_snapshots} (config.sample.num_snapshots): 0 (no "
                    "trajectory) or >= 2 (x_T ... x_0)")
  return shape, num_steps, eps


def _check_name(kind: str, name: str, table: dict):
  if name not in table:
    raise UserError(f"{kind}={name!r}: expected one of {sorted(table)}")


def pc_sampler(sde: SDE, score_fn, shape, rng, num_steps, *, predictor="reverse_diffusion",
               corrector="langevin", snr=0.16, n_corrector_steps=1, denoise=True, eps=None,
               num_snapshots=0, constrain=None, constraint=None) -> Samples:
  """Predictor-corrector sampling of `shape` ([B, ...]) from T down to 0 in num_steps steps.

  predictor: "euler_maruyama", "reverse_diffusion", "ancestral" or "none"; corrector:
  "langevin" (SNR step size), "ald" (annealed Langevin, NCSN's step) or "none". The plain
  Euler-Maruyama sampler is predictor="euler_maruyama", corrector="none"; the defaults are
  score_sde's PC sampler (snr=0.16 is its CIFAR-10 VE setting). n_corrector_steps Langevin
  steps run at each t_i before the predictor. denoise returns the last step's mean (no
  noise added at the end). `constrain` / `constraint`: see controllable.py.
  """
  _check_name("predictor", predictor, PREDICTORS)
  _check_name("corrector", corrector, CORRECTORS)
  if predictor == "none" and corrector == "none":
    raise UserError("predictor='none' and corrector='none': nothing would move the samples")
  n_corrector_steps = _check_count("n_corrector_steps", n_corrector_steps, 1)
  if _concrete(snr) is not None and not _concrete(snr) > 0:
    raise UserError(f"snr={snr}: the Langevin signal-to-noise ratio must be > 0")
  shape, num_steps, eps = check_common(sde, shape, num_steps, eps, 2, num_snapshots)
  if _concrete(eps) is not None and not _concrete(eps) < sde.sampling_start:
    raise UserError(f"eps={eps}: the PC grid runs from {type(sde).__name__}.sampling_start="
                    f"{sde.sampling_start} down to eps, so eps must be below it")
  return _pc_sample(sde, as_score_pytree(score_fn), rng, num_steps, snr, n_corrector_steps,
                    eps, shape=shape, predictor=predictor, corrector=corrector,
                    denoise=bool(denoise), num_snapshots=int(num_snapshots),
                    constrain=constrain, constraint=constraint)


# The probability-flow ODE dx/dt = drift(x, t), integrated from T down to eps (step -h).


def _euler(drift, x, t, h):
  return x - h * drift(x, t)


def _heun(drift, x, t, h):
  """Trapezoidal predictor-corrector (Heun's RK2), as in EDM's second-order sampler."""
  slope = drift(x, t)
  end_slope = drift(x - h * slope, t - h)
  return x - 0.5 * h * (slope + end_slope)


def _rk4(drift, x, t, h):
  k1 = drift(x, t)
  k2 = drift(x - 0.5 * h * k1, t - 0.5 * h)
  k3 = drift(x - 0.5 * h * k2, t - 0.5 * h)
  k4 = drift(x - h * k3, t - h)
  return x - h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


FIXED_STEP_SOLVERS = {"euler": (_euler, 1), "heun": (_heun, 2), "rk4": (_rk4, 4)}

# Score evaluations per attempted step: Tsit5 and Dopri5 reuse their last stage (FSAL) and
# add 6, Dopri8 has 13 stages; plus one at the start (counted against diffrax in the tests).
ADAPTIVE_SOLVERS = {"tsit5": (diffrax.Tsit5, 6), "dopri5": (diffrax.Dopri5, 6),
                    "dopri8": (diffrax.Dopri8, 13)}


def _tweedie_denoise(sde, score_fn, x, eps):
  """E[x_0 | x_eps] = (x + s^2 score) / a: the ODE stops at eps, this removes what is left."""
  t = jnp.full((x.shape[0],), eps, x.dtype)
  a, std = kernel(sde, t)
  return (x + broadcast_to_data(std**2, x) * score_fn(x, t)) / broadcast_to_data(a, x)


@functools.partial(jax.jit, static_argnames=("sde", "shape", "solver", "denoise",
                                             "num_snapshots"))
def _ode_sample(sde, score_fn, rng, num_steps, eps, *, shape, solver, denoise, num_snapshots):
  prior_rng, _ = jax.random.split(rng)  # the same x_T as _pc_sample for the same rng
  x = sde.prior_sample(prior_rng, shape)
  _check_score(score_fn, x, "ode_sampler")
  drift = sde.ode_drift(score_fn)
  step_fn, evaluations = FIXED_STEP_SOLVERS[solver]
  h = (sde.T - eps) / num_steps
  trajectory, snapshot_steps = _start_trajectory(num_snapshots, num_steps, x)

  def step(i, carry):
    x, trajectory = carry
    t = jnp.full((shape[0],), sde.T - i * h, x.dtype)
    x = step_fn(drift, x, t, h)
    return x, _record(trajectory, snapshot_steps, i + 1, x)

  x, trajectory = jax.lax.fori_loop(0, num_steps, step, (x, trajectory))
  nfe = evaluations * num_steps
  if denoise:
    x, nfe = _tweedie_denoise(sde, score_fn, x, eps), nfe + 1
    trajectory = None if trajectory is None else trajectory.at[-1].set(x)
  return Samples(x, jnp.asarray(nfe, jnp.int32), trajectory)


def ode_sampler(sde: SDE, score_fn, shape, rng, num_steps, *, solver="rk4", eps=None,
                denoise=False, num_snapshots=0) -> Samples:
  """Probability-flow ODE from x_T ~ prior to t = eps in num_steps equal steps.

  solver: "euler" (1 score evaluation per step), "heun" (2) or "rk4" (4). denoise adds one
  Tweedie step at eps. The only randomness is x_T (the same as pc_sampler's for one rng).
  """
  _check_name("solver", solver, FIXED_STEP_SOLVERS)
  shape, num_steps, eps = check_common(sde, shape, num_steps, eps, 1, num_snapshots)
  return _ode_sample(sde, as_score_pytree(score_fn), rng, num_steps, eps, shape=shape,
                     solver=solver, denoise=bool(denoise), num_snapshots=int(num_snapshots))


@functools.partial(jax.jit, static_argnames=("sde", "shape", "solver", "denoise", "max_steps"))
def _adaptive_ode_sample(sde, score_fn, rng, rtol, atol, eps, *, shape, solver, denoise,
                         max_steps):
  prior_rng, _ = jax.random.split(rng)
  x = sde.prior_sample(prior_rng, shape)
  _check_score(score_fn, x, "adaptive_ode_sampler")
  drift = sde.ode_drift(score_fn)
  solver_class, evaluations = ADAPTIVE_SOLVERS[solver]
  term = diffrax.ODETerm(lambda t, y, args: drift(y, jnp.full((shape[0],), t, y.dtype)))
  # One step size for the whole batch (error norm: RMS over every element), as score_sde's
  # scipy RK45 on the flattened batch.
  solution = diffrax.diffeqsolve(
      term, solver_class(), t0=sde.T, t1=eps, dt0=None, y0=x,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
      saveat=diffrax.SaveAt(t1=True))
  x = solution.ys[0]
  nfe = evaluations * solution.stats["num_steps"] + 1
  if denoise:
    x, nfe = _tweedie_denoise(sde, score_fn, x, eps), nfe + 1
  return Samples(x, jnp.asarray(nfe, jnp.int32), None)


def adaptive_ode_sampler(sde: SDE, score_fn, shape, rng, *, rtol=1e-5, atol=1e-5,
                         solver="tsit5", eps=None, denoise=False, max_steps=4096) -> Samples:
  """Probability-flow ODE from x_T ~ prior to t = eps with adaptive steps (diffrax; an
  integral controller, diffrax's PIDController defaults). nfe: score evaluations used.
  More than max_steps steps is an error at run time (diffrax's)."""
  _check_name("solver", solver, ADAPTIVE_SOLVERS)
  for name, tol in (("rtol", rtol), ("atol", atol)):
    if _concrete(tol) is not None and not _concrete(tol) > 0:
      raise UserError(f"{name}={tol}: ODE tolerances must be > 0")
  shape, _, eps = check_common(sde, shape, 1, eps, 1)
  return _adaptive_ode_sample(sde, as_score_pytree(score_fn), rng, rtol, atol, eps,
                              shape=shape, solver=solver, denoise=bool(denoise),
                              max_steps=int(max_steps))

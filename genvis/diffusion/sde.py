"""Forward SDEs of score-based diffusion (Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations"), and the reverse-time SDE / probability-flow ODE
built from any of them and a score function.

A forward SDE dx = f(x, t) dt + g(t) dw turns data at t = 0 into (nearly) a known prior at
t = T. Every SDE here is linear in x, so the perturbation kernel is Gaussian,
p_0t(x_t | x_0) = N(a(t) x_0, s(t)^2 I), and `marginal_prob` returns (a(t) x_0, s(t)):

| SDE       | f(x, t)        | g(t)^2                     | a(t)        | s(t)           |
|-----------|----------------|----------------------------|-------------|----------------|
| VE        | 0              | d[sigma^2]/dt              | 1           | sigma(t)       |
| VP        | -beta(t) x / 2 | beta(t)                    | e^{-B(t)/2} | sqrt(1-e^{-B}) |
| sub-VP    | -beta(t) x / 2 | beta(t) (1 - e^{-2 B(t)})  | e^{-B(t)/2} | 1 - e^{-B}     |
| rect.flow | -x / (1-t)     | 2 t / (1-t)                | 1 - t       | t              |

with sigma(t) = sigma_min (sigma_max / sigma_min)^t, beta(t) = beta_min + t (beta_max -
beta_min) and B(t) = int_0^t beta = beta_min t + (beta_max - beta_min) t^2 / 2, for T = 1
(with another T the schedules are functions of t / T).

VE follows score_sde: its std is sigma(t), not sqrt(sigma(t)^2 - sigma_min^2), i.e. the data
is taken as already blurred by sigma_min at t = 0 (the kernel still solves the SDE: only the
variance's derivative enters the Fokker-Planck equation).

Conventions (shared with genvis/diffusion/samplers.py, losses.py, likelihood.py):
- `x` is batch-first [B, ...]; `t` is a float array [B] (one time per example);
- `sde(x, t)` -> (drift [B, ...], diffusion [B]);
- a score (or noise-prediction, velocity) function `fn(x, t)` returns x's shape [B, ...]:
  losses, samplers and likelihoods hold it to that with `check_output_shape`;
- `eps` is the smallest time samplers stop at (score_sde: 1e-5 for VE, 1e-3 for VP and
  sub-VP, whose std vanishes at t = 0); losses and likelihoods take their own eps (1e-5);
  `sampling_start` is the largest time the PC samplers read the score at (T, except for
  rectified flow: see there);
- discrete time steps: step i of N = `num_scales` sits at t_i = i T / (N - 1), and
  `timestep_index(t)` rounds back (rounding, not score_sde's truncation, so t_i maps to i
  despite float error). The discrete chains (SMLD's `discrete_sigmas` for VE, DDPM's
  `discrete_betas` / `alphas_cumprod` for VP) serve the discrete losses (losses.py). The
  samplers do not use score_sde's `discretize`: their steps come from `marginal_prob`'s exact
  Gaussian transition over their own grid, which on the N-step grid is SMLD's / DDPM's step
  (samplers.py, tested there against those chains).

The classes are frozen dataclasses: hashable, so jit can take them as static arguments.
"""

import abc
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from genvis.errors import UserError

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def broadcast_to_data(values: jax.Array, x: jax.Array) -> jax.Array:
  """[B] per-example values reshaped to [B, 1, ..., 1] so they broadcast against x [B, ...]."""
  return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def check_times(x: jax.Array, t: jax.Array, where: str):
  """t must hold one time per example of x: shape [B] with B = x.shape[0]."""
  if x.ndim < 1 or jnp.shape(t) != (x.shape[0],):
    raise UserError(f"{where}: t must have shape [B]=[{x.shape[0] if x.ndim else '?'}] (one "
                    f"time per example of x {list(x.shape)}), got {list(jnp.shape(t))}")


def check_output_shape(fn: Callable, x, t=None, *, role: str, where: str):
  """fn(x, t) must return one value per entry of x, i.e. x's shape: a net that drops or adds
  a dim would otherwise broadcast silently (a finite, wrong loss) or fail deep inside a
  sampler's loop. Checked on shapes alone (jax.eval_shape evaluates nothing), so inside jit
  it costs one abstract trace at compile time and nothing at run time. x, t: arrays, tracers
  or jax.ShapeDtypeStructs; t defaults to one time per example, in x's dtype."""
  t_shape, t_dtype = (x.shape[:1], x.dtype) if t is None else (t.shape, t.dtype)
  out = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype),
                       jax.ShapeDtypeStruct(t_shape, t_dtype))
  shape = getattr(out, "shape", None)
  if shape != tuple(x.shape):
    got = f"shape {list(shape)}" if shape is not None else f"a {type(out).__name__}"
    raise UserError(f"{where}: the {role} function returned {got}; expected one array of x's "
                    f"shape {list(x.shape)} (one {role} value per entry of x)")


def _standard_normal_logp(z: jax.Array, std: float) -> jax.Array:
  """log N(z; 0, std^2 I), summed over all dims but the batch's: [B]."""
  num_dims = math.prod(z.shape[1:])
  squares = jnp.sum(jnp.square(z.reshape(z.shape[0], -1)), axis=1)
  return -0.5 * num_dims * math.log(2 * math.pi * std**2) - squares / (2 * std**2)


@dataclasses.dataclass(frozen=True)
class SDE(abc.ABC):
  """dx = f(x, t) dt + g(t) dw on t in [0, T], linear in x (Gaussian kernels)."""

  # Keyword-only, so that subclasses' own fields come first: VESDE(0.01, 50, 1000). Each
  # subclass declares `num_scales` (N, the steps of its discrete-time grid) last.
  T: float = dataclasses.field(default=1.0, kw_only=True)

  @property
  def eps(self) -> float:
    """Smallest time samplers stop at (score_sde's sampling_eps)."""
    return 1e-3

  @property
  def sampling_start(self) -> float:
    """Largest time the PC samplers read the score and the kernel at: their grid's top."""
    return self.T

  @abc.abstractmethod
  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(drift f(x, t) [B, ...], diffusion g(t) [B])."""

  @abc.abstractmethod
  def marginal_prob(self, x0: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean a(t) x0 [B, ...], std s(t) [B]) of p_0t(x_t | x0) = N(mean, std^2 I)."""

  @abc.abstractmethod
  def prior_std(self) -> float:
    """Std of the isotropic Gaussian prior at t = T."""

  def prior_sample(self, rng: jax.Array, shape) -> jax.Array:
    """x_T ~ N(0, prior_std^2 I) of the given shape (batch first)."""
    return self.prior_std() * jax.random.normal(rng, tuple(shape))

  def prior_logp(self, z: jax.Array) -> jax.Array:
    """log-density of the prior at z [B, ...], summed over all dims but the batch's: [B]."""
    return _standard_normal_logp(z, self.prior_std())

  def timestep_index(self, t: jax.Array) -> jax.Array:
    """Index i in 0..N-1 of the discrete step nearest t (t_i = i T / (N - 1)), int32 [B]."""
    index = jnp.round(t * (self.num_scales - 1) / self.T).astype(jnp.int32)
    return jnp.clip(index, 0, self.num_scales - 1)

  def timestep_time(self, index: jax.Array) -> jax.Array:
    """The time t_i = i T / (N - 1) of discrete step i (float32, shape of index)."""
    return index.astype(jnp.float32) * (self.T / (self.num_scales - 1))

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (or, with probability_flow, the ODE) driven by score_fn."""
    return ReverseSDE(self, score_fn, probability_flow)

  def ode_drift(self, score_fn: ScoreFn) -> ScoreFn:
    """The probability-flow ODE's drift f - g^2 s / 2, as fn(x, t) -> [B, ...]."""
    return lambda x, t: self.reverse(score_fn, probability_flow=True).sde(x, t)[0]

  def _check_time_grid(self):
    if self.num_scales < 2:
      raise UserError(f"{type(self).__name__}.num_scales={self.num_scales}: need >= 2 "
                      "discrete steps")
    if not self.T > 0:
      raise UserError(f"{type(self).__name__}.T={self.T} must be > 0")


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
  """dx = [f - g^2 s] dt + g dw-bar, run from T down to 0 (dt < 0 in an Euler step); with
  probability_flow, the ODE dx = [f - g^2 s / 2] dt with no noise (Song et al. 2021, eq. 6
  and 13)."""

  forward: SDE
  score_fn: ScoreFn
  probability_flow: bool = False

  @property
  def T(self) -> float:  # pylint: disable=invalid-name
    return self.forward.T

  @property
  def num_scales(self) -> int:
    return self.forward.num_scales

  def _score_weight(self) -> float:
    return 0.5 if self.probability_flow else 1.0

  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    drift, diffusion = self.forward.sde(x, t)
    g2 = broadcast_to_data(jnp.square(diffusion), x)
    drift = drift - g2 * self.score_fn(x, t) * self._score_weight()
    return drift, jnp.zeros_like(diffusion) if self.probability_flow else diffusion


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
  """Variance exploding: dx = sqrt(d[sigma^2]/dt) dw; SMLD (NCSN) in the discrete limit."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  num_scales: int = 1000

  def __post_init__(self):
    self._check_time_grid()
    if not 0 < self.sigma_min < self.sigma_max:
      raise UserError(f"VESDE needs 0 < sigma_min < sigma_max, got sigma_min="
                      f"{self.sigma_min}, sigma_max={self.sigma_max}")

  @property
  def eps(self) -> float:
    return 1e-5

  def sigma(self, t: jax.Array) -> jax.Array:
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

  def discrete_sigmas(self) -> jax.Array:
    """sigma at t_0..t_{N-1}: geometric from sigma_min to sigma_max ([N], ascending)."""
    return jnp.asarray(np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max),
                                          self.num_scales)), jnp.float32)

  def sde(self, x, t):
    check_times(x, t, "VESDE.sde")
    log_ratio = math.log(self.sigma_max / self.sigma_min)
    diffusion = self.sigma(t) * jnp.sqrt(2 * log_ratio / self.T)
    return jnp.zeros_like(x), diffusion

  def marginal_prob(self, x0, t):
    check_times(x0, t, "VESDE.marginal_prob")
    return x0, self.sigma(t)

  def prior_std(self) -> float:
    return self.sigma_max


@dataclasses.dataclass(frozen=True)
class VPSDE(SDE):
  """Variance preserving: dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw; DDPM in the discrete
  limit (beta_i = beta(t_i) / N, i.e. linspace(beta_min / N, beta_max / N, N))."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  num_scales: int = 1000

  def __post_init__(self):
    self._check_time_grid()
    if not 0 <= self.beta_min < self.beta_max:
      raise UserError(f"{type(self).__name__} needs 0 <= beta_min < beta_max, got beta_min="
                      f"{self.beta_min}, beta_max={self.beta_max}")
    self._check_ddpm_betas()

  def _check_ddpm_betas(self):
    """DDPM's chain (ddpm_loss) needs every beta_i = beta(t_i) / N below 1."""
    if self.beta_max >= self.num_scales:
      raise UserError(f"{type(self).__name__}: beta_max={self.beta_max} with num_scales="
                      f"{self.num_scales} makes DDPM's last beta_max / N >= 1; use more scales")

  # With T != 1 the schedule is stretched: beta is a function of s = t / T, and the SDE
  # in t has drift -beta(s) x / (2T) and diffusion^2 beta(s) / T.
  def beta(self, t: jax.Array) -> jax.Array:
    return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t: jax.Array) -> jax.Array:
    """log a(t) = -B / 2 with B = int_0^s beta = beta_min s + (beta_max - beta_min) s^2 / 2."""
    s = t / self.T
    return -0.25 * s**2 * (self.beta_max - self.beta_min) - 0.5 * s * self.beta_min

  def discrete_betas(self) -> np.ndarray:
    """DDPM's beta_0..beta_{N-1} (float64 numpy; constants under jit)."""
    return np.linspace(self.beta_min / self.num_scales, self.beta_max / self.num_scales,
                       self.num_scales)

  def alphas_cumprod(self) -> np.ndarray:
    """DDPM's alpha-bar_i = prod_{j <= i} (1 - beta_j) (float64 numpy)."""
    return np.cumprod(1.0 - self.discrete_betas())

  def sde(self, x, t):
    check_times(x, t, f"{type(self).__name__}.sde")
    beta = self.beta(t) / self.T
    return -0.5 * broadcast_to_data(beta, x) * x, jnp.sqrt(beta)

  def marginal_prob(self, x0, t):
    check_times(x0, t, "VPSDE.marginal_prob")
    log_mean = self.log_mean_coeff(t)
    # expm1 keeps the std accurate at small t, where 1 - e^{2 log a} cancels.
    return broadcast_to_data(jnp.exp(log_mean), x0) * x0, jnp.sqrt(-jnp.expm1(2 * log_mean))

  def prior_std(self) -> float:
    return 1.0


@dataclasses.dataclass(frozen=True)
class SubVPSDE(VPSDE):
  """sub-VP: the VP drift with diffusion^2 = beta(t) (1 - e^{-2 B(t)}), so the variance
  (1 - e^{-B})^2 stays below VP's (1 - e^{-B}) (Song et al. 2021, eq. 29). It has no DDPM
  chain (ddpm_loss refuses it), so VP's discrete betas are not its concern."""

  def _check_ddpm_betas(self):
    """No DDPM chain, so nothing to check: any num_scales >= 2 will do."""

  def marginal_prob(self, x0, t):
    check_times(x0, t, "SubVPSDE.marginal_prob")
    log_mean = self.log_mean_coeff(t)
    return broadcast_to_data(jnp.exp(log_mean), x0) * x0, -jnp.expm1(2 * log_mean)

  def sde(self, x, t):
    drift, vp_diffusion = super().sde(x, t)
    # 1 - e^{-2B} = 1 - e^{4 log a}
    return drift, vp_diffusion * jnp.sqrt(-jnp.expm1(4 * self.log_mean_coeff(t)))


@dataclasses.dataclass(frozen=True)
class RectifiedFlow(SDE):
  """The straight path x_t = (1 - t) x0 + t noise (Liu et al. 2022; SD3), prior N(0, I) at
  t = 1, sampled deterministically from t = 1 to 0 with the velocity v = noise - x0.

  As an SDE it has a(t) = 1 - t and s(t) = t, hence f = -x / (1 - t), g^2 = 2t / (1 - t),
  and its probability-flow drift f - g^2 s / 2 is exactly the velocity. Both blow up at
  t = 1 (the score alone does not pin the velocity there), so `sde` and
  `velocity_from_score` read t as min(t, 1 - `end_gap`): over the last `end_gap` the velocity
  changes by O(end_gap), so an ODE integral to t = 1 moves by O(end_gap^2) (~1e-6);
  `reverse` reads the score at the capped time too.
  The PC samplers start their grid at `sampling_start` = 1 - end_gap for the same reason: at
  t = 1 the kernel forgets x0 (a(1) = 0) and the score is -x whatever the data, so a step
  through the denoised estimate x0_hat = (x + s^2 score) / a is 0 / 0 there (the ancestral
  step gave NaN). From 1 - end_gap, x0_hat is finite (as from VP's T, where a = 0.0066), and
  the prior N(0, I) stands in for p_{1 - end_gap}, which differs from it by O(end_gap).
  `score_from_velocity` divides by t: call it at t > 0.
  """

  num_scales: int = 1000
  end_gap: float = 1e-3

  def __post_init__(self):
    self._check_time_grid()
    if self.T != 1.0:
      raise UserError(f"RectifiedFlow.T={self.T}: the straight path ends at the prior at T=1")
    if not 0 < self.end_gap < 0.5:
      raise UserError(f"RectifiedFlow.end_gap={self.end_gap} must be in (0, 0.5)")

  @property
  def sampling_start(self) -> float:
    return 1.0 - self.end_gap

  def _capped(self, t):
    return jnp.minimum(t, 1.0 - self.end_gap)

  def sde(self, x, t):
    check_times(x, t, "RectifiedFlow.sde")
    t = self._capped(t)
    drift = -x / broadcast_to_data(1.0 - t, x)
    return drift, jnp.sqrt(2.0 * t / (1.0 - t))

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
    """As SDE.reverse, with the score also read at the capped time, so the drift's parts
    agree (else f and g^2 at 1 - end_gap would meet the score at 1)."""
    return ReverseSDE(self, lambda x, t: score_fn(x, self._capped(t)), probability_flow)

  def marginal_prob(self, x0, t):
    check_times(x0, t, "RectifiedFlow.marginal_prob")
    return broadcast_to_data(1.0 - t, x0) * x0, t

  def prior_std(self) -> float:
    return 1.0

  @staticmethod
  def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """d x_t / dt along the straight path: noise - x0."""
    return noise - x0

  @staticmethod
  def ode_drift_from_velocity(velocity_fn: ScoreFn) -> ScoreFn:
    """The ODE drift is the predicted velocity itself: fn(x, t) -> velocity_fn(x, t)."""
    return velocity_fn

  @staticmethod
  def score_from_velocity(velocity: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """s = -(x - (1 - t) x0_hat) / t^2 with x0_hat = x - t v, i.e. -(x + (1 - t) v) / t."""
    t = broadcast_to_data(t, x)
    return -(x + (1.0 - t) * velocity) / t

  def velocity_from_score(self, score: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """The inverse of score_from_velocity: v = -(x + t s) / (1 - t) (t capped at 1 - end_gap)."""
    t = broadcast_to_data(self._capped(t), x)
    return -(x + t * score) / (1.0 - t)

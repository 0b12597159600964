"""The forward SDEs against what they must be: their kernels solve the SDE (moment ODEs and a
Monte-Carlo simulation), the VP prior is N(0, I) at T, the Gaussian-data score is the gradient
of the marginal density, the reverse drifts follow the paper, the SMLD / DDPM chains that the
discrete losses use are score_sde's, and rectified flow's score <-> velocity conversions invert
each other. (The samplers' steps are held to the SMLD / DDPM chains in test_samplers.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.diffusion import gaussian, sde as sde_lib
from genvis.errors import UserError

SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE(),
        "rf": sde_lib.RectifiedFlow()}
X0 = np.array([0.7, -1.3], np.float32)  # the point mass the forward SDE starts from
T_CHECK = 0.5


def _coefficients(sde, times):
  """(k(t), g(t)) on a grid of times, with f(x, t) = k(t) x (all the SDEs are linear)."""
  times = jnp.asarray(times, jnp.float32)
  drift, diffusion = sde.sde(jnp.ones((times.shape[0], 1)), times)
  return np.asarray(drift[:, 0], np.float64), np.asarray(diffusion, np.float64)


def _kernel(sde, t):
  mean, std = sde.marginal_prob(jnp.asarray(X0)[None], jnp.array([t], jnp.float32))
  return np.asarray(mean[0]), float(std[0])


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_prob_solves_the_moment_odes(name):
  """Mean and variance of the SDE from a point mass obey dm/dt = k m, dv/dt = 2 k v + g^2;
  a fine Euler integration from (x0, std(0)^2) must land on marginal_prob at t = 0.5."""
  sde = SDES[name]
  steps = 20_000
  dt = T_CHECK / steps
  k, g = _coefficients(sde, (np.arange(steps) + 0.5) * dt)  # midpoint rule
  mean_coeff, var = 1.0, _kernel(sde, 0.0)[1]**2
  for k_i, g_i in zip(k, g):
    mean_coeff *= 1.0 + k_i * dt
    var += (2.0 * k_i * var + g_i**2) * dt
  mean, std = _kernel(sde, T_CHECK)
  np.testing.assert_allclose(mean, mean_coeff * X0, rtol=1e-4)
  np.testing.assert_allclose(std, np.sqrt(var), rtol=1e-4)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_marginal_prob_matches_euler_maruyama_paths(name):
  """4,000 Euler-Maruyama paths of dx = f dt + g dw from x0: their mean and std at t = 0.5
  agree with marginal_prob within 4 standard errors (+0.5 % for the Euler bias)."""
  sde = SDES[name]
  num_paths, steps = 4000, 500
  dt = T_CHECK / steps
  std_at_0 = _kernel(sde, 0.0)[1]  # VE starts at sigma_min

  @jax.jit
  def simulate(rng):
    x = jnp.broadcast_to(jnp.asarray(X0), (num_paths, 2))
    x = x + std_at_0 * jax.random.normal(rng, x.shape)

    def step(x, inputs):
      t, key = inputs
      drift, diffusion = sde.sde(x, jnp.full((num_paths,), t))
      return x + drift * dt + diffusion[:, None] * jnp.sqrt(dt) * jax.random.normal(
          key, x.shape), None

    times = jnp.arange(steps) * dt
    return jax.lax.scan(step, x, (times, jax.random.split(rng, steps)))[0]

  paths = np.asarray(simulate(jax.random.key(0)), np.float64)
  mean, std = _kernel(sde, T_CHECK)
  sample_std = paths.std(axis=0)
  mean_se = sample_std / np.sqrt(num_paths)
  assert np.all(np.abs(paths.mean(axis=0) - mean) < 4 * mean_se + 5e-3 * np.abs(mean))
  std_se = std / np.sqrt(2 * num_paths)
  assert np.all(np.abs(sample_std - std) < 4 * std_se + 5e-3 * std)


def test_vp_prior_is_standard_normal_at_T():
  vp = SDES["vp"]
  x0 = jnp.linspace(-3, 3, 7)[:, None]
  mean, std = vp.marginal_prob(x0, jnp.full((7,), vp.T))
  assert float(jnp.max(jnp.abs(mean))) < 0.021  # a(1) = e^{-5.025} = 0.0066
  np.testing.assert_allclose(std, 1.0, atol=3e-5)
  z = jax.random.normal(jax.random.key(1), (4, 3, 2))
  expected = jax.scipy.stats.norm.logpdf(z).reshape(4, -1).sum(axis=1)
  np.testing.assert_allclose(vp.prior_logp(z), expected, rtol=1e-6)


@pytest.mark.parametrize("name,std", [("vp", 1.0), ("subvp", 1.0), ("ve", 50.0), ("rf", 1.0)])
def test_prior_sample_and_logp(name, std):
  sde = SDES[name]
  samples = np.asarray(sde.prior_sample(jax.random.key(2), (2000, 2)))
  assert samples.shape == (2000, 2)
  assert abs(samples.mean()) < 4 * std / np.sqrt(4000)
  assert abs(samples.std() / std - 1) < 4 / np.sqrt(8000)
  _, std_at_t = sde.marginal_prob(jnp.zeros((1, 2)), jnp.array([sde.T]))
  np.testing.assert_allclose(std_at_t, std, rtol=1e-4)
  z = jnp.array([[0.3, -2.0]])
  expected = jax.scipy.stats.norm.logpdf(z, scale=std).sum()
  np.testing.assert_allclose(sde.prior_logp(z), [expected], rtol=1e-6)


def _random_gaussian(rng, d):
  a = rng.normal(size=(d, d))
  return rng.normal(size=d).astype(np.float32), (a @ a.T / d + 0.2 * np.eye(d)).astype(
      np.float32)


@pytest.mark.parametrize("name", list(SDES))
def test_gaussian_score_is_grad_of_marginal_density(name):
  """The closed-form score equals jax.grad of scipy's N(a m, a^2 C + s^2 I) log-density."""
  sde = SDES[name]
  rng = np.random.default_rng(3)
  mean, cov = _random_gaussian(rng, 4)
  x = jnp.asarray(rng.normal(size=(6, 2, 2)) * 2, jnp.float32)  # d = 4 in image shape
  t = jnp.asarray(rng.uniform(0.05, 0.95, size=6), jnp.float32)

  def reference_logp(x_flat, t_one):
    _, std = sde.marginal_prob(jnp.zeros((1, 1)), t_one[None])
    a = sde.marginal_prob(jnp.ones((1, 1)), t_one[None])[0][0, 0]
    cov_t = a**2 * cov + std[0]**2 * jnp.eye(4)
    return jax.scipy.stats.multivariate_normal.logpdf(x_flat, a * mean, cov_t)

  @jax.jit
  def compare(x, t):
    flat = x.reshape(6, 4)
    return (gaussian.gaussian_score(sde, mean, cov)(x, t),
            jax.vmap(jax.grad(reference_logp))(flat, t).reshape(x.shape),
            gaussian.gaussian_logp(sde, mean, cov)(x, t), jax.vmap(reference_logp)(flat, t))

  score, expected_score, logp, expected_logp = compare(x, t)
  assert score.shape == x.shape
  np.testing.assert_allclose(score, expected_score, rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(logp, expected_logp, rtol=1e-5)


def test_mixture_logp_and_score():
  """A two-component mixture's log-density matches the weighted sum of densities, and its
  score is the responsibility-weighted sum of the components' scores."""
  vp = SDES["vp"]
  rng = np.random.default_rng(4)
  (m1, c1), (m2, c2) = _random_gaussian(rng, 2), _random_gaussian(rng, 2)
  weights = np.array([0.3, 0.7], np.float32)
  x = jnp.asarray(rng.normal(size=(5, 2)), jnp.float32)
  t = jnp.full((5,), 0.2)

  @jax.jit
  def compare(x, t):
    logp1 = gaussian.gaussian_logp(vp, m1, c1)(x, t)
    logp2 = gaussian.gaussian_logp(vp, m2, c2)(x, t)
    mixture = gaussian.gaussian_mixture_logp(vp, weights, [m1, m2], [c1, c2])(x, t)
    resp = (0.3 * jnp.exp(logp1) / jnp.exp(mixture))[:, None]
    expected_score = (resp * gaussian.gaussian_score(vp, m1, c1)(x, t)
                      + (1 - resp) * gaussian.gaussian_score(vp, m2, c2)(x, t))
    score = gaussian.gaussian_mixture_score(vp, weights, [m1, m2], [c1, c2])(x, t)
    return mixture, jnp.log(0.3 * jnp.exp(logp1) + 0.7 * jnp.exp(logp2)), score, expected_score

  mixture, expected_mixture, score, expected_score = compare(x, t)
  np.testing.assert_allclose(mixture, expected_mixture, rtol=1e-5)
  np.testing.assert_allclose(score, expected_score, rtol=1e-4, atol=1e-5)


def test_reverse_drifts_follow_the_paper():
  """Reverse SDE drift f - g^2 s with diffusion g; the ODE f - g^2 s / 2 without noise."""
  vp = SDES["vp"]
  x = jnp.array([[1.0, -2.0], [0.5, 0.25]])
  t = jnp.array([0.3, 0.8])
  fixed_score = jnp.array([[0.2, 0.1], [-1.0, 3.0]])
  score_fn = lambda x, t: fixed_score

  @jax.jit
  def evaluate(x, t):  # one compile instead of many eager ops
    return (vp.sde(x, t), vp.reverse(score_fn).sde(x, t),
            vp.reverse(score_fn, probability_flow=True).sde(x, t), vp.ode_drift(score_fn)(x, t))

  ((drift, diffusion), (rev_drift, rev_diffusion), (ode_drift, ode_diffusion),
   ode_drift_fn) = evaluate(x, t)
  g2 = (diffusion**2)[:, None]
  np.testing.assert_allclose(rev_drift, drift - g2 * fixed_score, rtol=1e-6)
  np.testing.assert_allclose(rev_diffusion, diffusion)
  np.testing.assert_allclose(ode_drift, drift - 0.5 * g2 * fixed_score, rtol=1e-6)
  np.testing.assert_allclose(ode_diffusion, 0.0)
  np.testing.assert_allclose(ode_drift_fn, ode_drift)


def test_smld_and_ddpm_chains():
  """score_sde's SMLD sigmas (geometric) and DDPM betas (linspace(beta_min / N, beta_max / N,
  N)) on the grid t_i = i T / (N - 1), which timestep_index maps back to i."""
  ve, vp = sde_lib.VESDE(num_scales=10), sde_lib.VPSDE(num_scales=40)
  index = jnp.arange(10)
  round_trip, ve_sigmas = jax.jit(lambda i: (ve.timestep_index(ve.timestep_time(i)),
                                             ve.sigma(ve.timestep_time(i))))(index)
  np.testing.assert_array_equal(round_trip, index)
  sigmas = np.geomspace(0.01, 50.0, 10)
  np.testing.assert_allclose(ve_sigmas, sigmas, rtol=1e-5)
  np.testing.assert_allclose(ve.discrete_sigmas(), sigmas, rtol=1e-5)
  betas = np.linspace(0.1 / 40, 20.0 / 40, 40)
  np.testing.assert_allclose(vp.discrete_betas(), betas, rtol=1e-12)
  np.testing.assert_allclose(vp.alphas_cumprod(), np.cumprod(1 - betas), rtol=1e-12)


def test_ddpm_alpha_bar_approaches_the_vp_kernel():
  """With N = 1000 steps, DDPM's alpha-bar_i is close to a(t_i)^2 of the continuous VP SDE."""
  vp = SDES["vp"]
  index = jnp.array([100, 500, 999])
  a = gaussian.mean_coefficient(vp, vp.timestep_time(index))
  np.testing.assert_allclose(np.log(vp.alphas_cumprod()[np.asarray(index)]),
                             2 * np.log(np.asarray(a)), rtol=2e-2)


def test_rectified_flow_score_velocity_conversions():
  """For a point mass at c: velocity (x - c) / t and score -(x - (1 - t) c) / t^2 map into
  each other, and the probability-flow drift from the score is that velocity."""
  flow = SDES["rf"]
  c = jnp.array([[0.5, -1.0]])
  x = jnp.array([[0.1, 0.4], [2.0, -0.3], [-1.0, 1.0]])
  t = jnp.array([0.2, 0.6, 0.9])
  velocity = (x - c) / t[:, None]
  score = -(x - (1 - t[:, None]) * c) / t[:, None]**2
  np.testing.assert_allclose(flow.velocity_from_score(score, x, t), velocity, rtol=1e-5)
  np.testing.assert_allclose(flow.score_from_velocity(velocity, x, t), score, rtol=1e-5)
  np.testing.assert_allclose(flow.ode_drift(lambda y, s: score)(x, t), velocity, rtol=1e-4)
  noise, x0 = jnp.ones((1, 2)), c
  np.testing.assert_allclose(flow.velocity_target(x0, noise), noise - x0)
  velocity_fn = lambda y, s: y
  assert flow.ode_drift_from_velocity(velocity_fn) is velocity_fn
  # At t = 1 the drift stays finite (time capped at 1 - end_gap).
  drift, diffusion = flow.reverse(lambda y, s: -y, probability_flow=True).sde(x, jnp.ones(3))
  assert np.all(np.isfinite(drift)) and np.all(diffusion == 0)


def test_bad_inputs_raise_user_errors():
  with pytest.raises(UserError, match="t must have shape"):
    SDES["vp"].marginal_prob(jnp.ones((3, 2)), jnp.ones((2,)))
  with pytest.raises(UserError, match="sigma_min"):
    sde_lib.VESDE(sigma_min=1.0, sigma_max=0.5)
  with pytest.raises(UserError, match="num_scales"):
    sde_lib.VPSDE(num_scales=1)
  with pytest.raises(UserError, match="beta_max / N >= 1"):
    sde_lib.VPSDE(num_scales=10)
  # sub-VP has no DDPM chain (ddpm_loss refuses it; samplers use its exact kernel), so its
  # N is free: beta_max / N >= 1 is no mistake there.
  coarse_subvp = sde_lib.SubVPSDE(num_scales=10)
  _, std = coarse_subvp.marginal_prob(jnp.ones((1, 2)), jnp.ones((1,)))
  np.testing.assert_allclose(std, 1.0 - np.exp(-10.05), rtol=1e-6)
  with pytest.raises(UserError, match="T=2"):
    sde_lib.RectifiedFlow(T=2.0)
  with pytest.raises(UserError, match="cov"):
    gaussian.gaussian_score(SDES["vp"], np.zeros(2), np.eye(3))(jnp.ones((1, 2)), jnp.ones(1))

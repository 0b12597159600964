"""Probability-flow likelihoods against exact answers.

- Hutchinson's estimate (Rademacher and Gaussian probes) of a drift's divergence averages to
  the Jacobian's trace; the scaled-basis "exact" probes give it exactly.
- For Gaussian data the ODE with the exact score must carry p_eps to p_T: the solve's
  log p_T(z) + int div equals the analytic log p_eps(x) within the solver's tolerance, and
  with the SDE's own prior the bits/dim are the analytic ones up to the prior's mismatch
  (p_T is not exactly the prior for VE / VP at T; it is for rectified flow).
- The bin offset: K levels on [-1, 1] (bin width w = 2 / (K - 1)) add log2(1 / w) bits/dim to
  a continuous density's, so a density uniform over the bins gives log2 K, and a Gaussian's
  dequantised bits bound its exact discrete bits (erf differences) from above, by the
  predicted Jensen gap.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from genvis.diffusion import gaussian, likelihood, sde as sde_lib
from genvis.errors import UserError

DIMS = 4
MEAN = np.array([0.3, -0.2, 0.1, 0.0], np.float32)
_A = np.random.default_rng(0).normal(size=(DIMS, DIMS))
COV = (0.05 * _A @ _A.T / DIMS + 0.02 * np.eye(DIMS)).astype(np.float32)
# sub-VP shares VP's code path here (its coefficients are checked in test_sde.py); each solve
# costs a diffrax compile (~1.5 s of CPU).
SDES = {"vp": sde_lib.VPSDE(), "ve": sde_lib.VESDE(), "rf": sde_lib.RectifiedFlow()}
EXACT_BATCH, HUTCHINSON_BATCH, HUTCHINSON_PROBES = 8, 64, 16
LEVELS = 256
EPS = 1e-5


def _on_grid(x, levels):
  width = 2.0 / (levels - 1)
  return jnp.round((jnp.clip(x, -1, 1) + 1) / width) * width - 1


@pytest.fixture(scope="module")
def solves():
  """Every ODE solve of this file, compiled together once. VP goes through ode_bits_per_dim
  on data snapped to a 256-level grid, so its solve also checks dequantisation and offset."""

  @jax.jit
  def run(rng):
    data_rng, exact_rng, bits_rng, hutchinson_rng = jax.random.split(rng, 4)
    x = gaussian.sample_gaussian(data_rng, MEAN, COV, HUTCHINSON_BATCH)
    small = x[:EXACT_BATCH]
    out = {"x": x, "grid": _on_grid(small, LEVELS)}
    for name, sde in SDES.items():
      score = gaussian.gaussian_score(sde, MEAN, COV)
      if name == "vp":
        out["bits"], out[name] = likelihood.ode_bits_per_dim(
            sde, score, out["grid"], bits_rng, num_levels=LEVELS, divergence="exact")
      else:
        out[name] = likelihood.ode_log_likelihood(sde, score, small, exact_rng,
                                                  divergence="exact")
    out["rademacher"] = likelihood.ode_log_likelihood(
        SDES["vp"], gaussian.gaussian_score(SDES["vp"], MEAN, COV), x, hutchinson_rng,
        divergence="rademacher", num_probes=HUTCHINSON_PROBES)
    # The points VP's likelihood was measured at: ode_bits_per_dim splits its rng into
    # (dequantisation, probes), so replaying the first gives them.
    dequantize_rng, _ = jax.random.split(bits_rng)
    out["dequantised"] = likelihood.dequantize(dequantize_rng, out["grid"], LEVELS)
    # Analytic log-densities at the start (t = eps) and end (t = T) of each solve.
    starts = {name: small for name in SDES}
    starts.update(vp=out["dequantised"], rademacher=x)
    for name, start in starts.items():
      sde = SDES.get(name, SDES["vp"])
      out[name + "_start"] = _analytic_logp(sde, start, EPS)
      out[name + "_end"] = _analytic_logp(sde, out[name].z, sde.T)
    return out

  return jax.tree.map(np.asarray, run(jax.random.key(0)))


def _analytic_logp(sde, x, t):
  return gaussian.gaussian_logp(sde, MEAN, COV)(x, jnp.full((x.shape[0],), t))


@pytest.mark.parametrize("name", list(SDES))
def test_exact_trace_ode_likelihood_matches_the_gaussian(solves, name):
  result, exact = solves[name], solves[name + "_start"]
  # The ODE transports p_eps to p_T: checked with p_T's exact density at the end point.
  transported = solves[name + "_end"] + result.delta_logp
  np.testing.assert_allclose(transported, exact, atol=2e-3)
  # With the SDE's prior in place of p_T: bits/dim within the prior's mismatch (RF: none).
  bits = (result.logp - exact) / (DIMS * math.log(2))
  assert np.max(np.abs(bits)) < (1e-3 if name == "rf" else 0.02), bits
  assert 0 < int(result.num_steps) < 200


def test_hutchinson_ode_likelihood_is_unbiased(solves):
  """With 16 Rademacher probes, an example's error is the probes' noise in int div. Over 64
  independent examples its mean must be zero within 4 standard errors (+ the solver's 2e-3),
  and its root mean square stays below 0.5 nats (0.18 bits/dim at d = 4)."""
  errors = (solves["rademacher_end"] + solves["rademacher"].delta_logp
            - solves["rademacher_start"])
  standard_error = errors.std() / np.sqrt(len(errors))
  assert errors.std() > 1e-3  # an estimate, not the exact trace
  assert abs(errors.mean()) < 4 * standard_error + 2e-3, (errors.mean(), standard_error)
  assert np.sqrt(np.mean(errors**2)) < 0.5, errors


def test_ode_bits_per_dim_dequantises_and_adds_the_bin_offset(solves):
  width = 2.0 / (LEVELS - 1)
  offsets = solves["dequantised"] - solves["grid"]
  assert np.all(np.abs(offsets) <= width / 2 + 1e-7) and np.any(np.abs(offsets) > width / 10)
  result = solves["vp"]
  np.testing.assert_allclose(
      solves["bits"], -result.logp / (DIMS * math.log(2))
      + math.log2((LEVELS - 1) / 2), rtol=1e-6)


@pytest.fixture(scope="module")
def divergences():
  """Single-probe Hutchinson estimates [P, B] of two drifts, with their exact traces."""
  d, batch, num_probes = 5, 3, 3000
  rng = np.random.default_rng(1)
  matrix = jnp.asarray(rng.normal(size=(d, d)), jnp.float32)
  w1 = jnp.asarray(rng.normal(size=(d, 8)), jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(8, d)) / 3, jnp.float32)
  drifts = {
      "linear": lambda x, t: x @ matrix.T,
      "nonlinear": lambda x, t: jnp.tanh(x @ w1 * (1 + t[:, None])) @ w2 + jnp.sin(x),
      "diagonal": lambda x, t: jnp.sin(x) * t[:, None],
  }
  x = jnp.asarray(rng.normal(size=(batch, d)), jnp.float32)
  t = jnp.array([0.2, 0.5, 0.9])

  @jax.jit
  def run(rng):
    out = {}
    for name, drift in drifts.items():
      jacobians = jax.vmap(lambda xi, ti: jax.jacfwd(lambda y: drift(y[None], ti[None])[0])(xi))(
          x, t)
      out[name, "trace"] = jnp.trace(jacobians, axis1=1, axis2=2)
      exact_probes = likelihood.divergence_probes(rng, x, "exact")
      out[name, "drift"], out[name, "exact"] = likelihood.drift_and_divergence(
          drift, x, t, exact_probes)
      for i, kind in enumerate(("rademacher", "gaussian")):
        probes = likelihood.divergence_probes(jax.random.fold_in(rng, i), x, kind, num_probes)
        out[name, kind] = jax.vmap(
            lambda v: likelihood.drift_and_divergence(drift, x, t, v[None])[1])(probes)
        out[name, kind, "all"] = likelihood.drift_and_divergence(drift, x, t, probes)[1]
    return out

  return x, t, drifts, jax.tree.map(np.asarray, run(jax.random.key(2)))


@pytest.mark.parametrize("name", ["linear", "nonlinear"])
@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_divergence_averages_to_the_trace(divergences, name, kind):
  x, t, drifts, out = divergences
  per_probe, trace = out[name, kind], out[name, "trace"]
  standard_error = per_probe.std(axis=0) / np.sqrt(per_probe.shape[0])
  assert np.all(np.abs(per_probe.mean(axis=0) - trace) < 4 * standard_error), (
      per_probe.mean(axis=0), trace)
  np.testing.assert_allclose(out[name, kind, "all"], per_probe.mean(axis=0), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(out[name, "exact"], trace, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[name, "drift"], drifts[name](x, t), rtol=1e-5, atol=1e-6)


def test_rademacher_is_exact_for_a_diagonal_jacobian(divergences):
  _, _, _, out = divergences
  np.testing.assert_allclose(out["diagonal", "rademacher"],
                             np.broadcast_to(out["diagonal", "trace"],
                                             out["diagonal", "rademacher"].shape), rtol=1e-5)
  assert out["diagonal", "gaussian"].std(axis=0).min() > 0.01  # Gaussian probes are not


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_uniform_density_over_the_bins_gives_log2_levels(levels):
  """Uniform on [-1 - w/2, 1 + w/2]^d: -log2 p / d = log2(2 + w), and the offset log2(1 / w)
  brings it to log2 K, the entropy of K equally likely levels."""
  width = 2.0 / (levels - 1)
  logp = jnp.full((3,), -DIMS * math.log(2 + width))
  np.testing.assert_allclose(likelihood.bits_per_dim_from_logp(logp, DIMS, levels),
                             math.log2(levels), rtol=1e-6)
  assert likelihood.bits_per_dim_offset(levels) == pytest.approx(math.log2((levels - 1) / 2))


def test_dequantised_gaussian_bits_bound_the_discrete_bits():
  """1-D N(mu, sigma^2) on K = 256 levels: the exact bin mass P(k) (normal CDF differences)
  against E_u[-log2 p(x_k + u)] + offset, where E_u[(x + u - mu)^2] = (x - mu)^2 + w^2 / 12.
  Jensen puts the dequantised bits above the discrete ones; expanding P(k) = w p(x_k) (1 +
  w^2 p'' / (24 p)) the gap is w^2 (x_k - mu)^2 / (24 sigma^4 ln 2) bits (float64 here)."""
  mu, sigma = 0.1, 0.3
  width = 2.0 / (LEVELS - 1)
  levels = np.linspace(-1, 1, LEVELS)[::17]
  discrete_bits = -np.log2(stats.norm.cdf(levels + width / 2, mu, sigma)
                           - stats.norm.cdf(levels - width / 2, mu, sigma))
  expected_nats = (0.5 * math.log(2 * math.pi * sigma**2)
                   + ((levels - mu)**2 + width**2 / 12) / (2 * sigma**2))
  dequantised_bits = likelihood.bits_per_dim_from_logp(-expected_nats, 1, LEVELS)
  gap = dequantised_bits - discrete_bits
  predicted_gap = width**2 * (levels - mu)**2 / (24 * sigma**4 * math.log(2))
  assert np.all(gap > 0)
  np.testing.assert_allclose(gap, predicted_gap, rtol=0.05, atol=1e-8)
  # And the Monte-Carlo dequantisation agrees with the closed-form expectation.
  grid = jnp.broadcast_to(jnp.asarray(levels, jnp.float32), (4000, len(levels)))
  noisy = np.asarray(likelihood.dequantize(jax.random.key(5), grid, LEVELS), np.float64)
  np.testing.assert_allclose(((noisy - levels)**2).mean(axis=0), width**2 / 12, rtol=0.1)
  assert np.all(np.abs(noisy - levels) <= width / 2 + 1e-7)


def test_likelihood_mistakes_raise_user_errors():
  x = jnp.ones((2, 3))
  with pytest.raises(UserError, match="divergence"):
    likelihood.divergence_probes(jax.random.key(0), x, "hutchinson")
  with pytest.raises(UserError, match="num_probes"):
    likelihood.divergence_probes(jax.random.key(0), x, "gaussian", 0)
  with pytest.raises(UserError, match="rademacher"):
    likelihood.divergence_probes(jax.random.key(0), jnp.ones((1, 1025)), "exact")
  with pytest.raises(UserError, match="num_levels"):
    likelihood.bits_per_dim_offset(1)
  with pytest.raises(UserError, match="eps"):
    likelihood.ode_log_likelihood(SDES["vp"], lambda x, t: x, x, jax.random.key(0), eps=0.0)


def test_a_score_of_the_wrong_shape_is_a_one_line_user_error():
  toy = jnp.ones((3, 3))  # d == B: a [B] score would broadcast against x
  for call in (likelihood.ode_log_likelihood, likelihood.ode_bits_per_dim):
    with pytest.raises(UserError) as error:
      jax.jit(lambda x: call(SDES["vp"], lambda x, t: jnp.sum(x, -1), x, jax.random.key(0)))(toy)
    assert str(error.value) == ("ode_log_likelihood: the score function returned shape [3]; "
                                "expected one array of x's shape [3, 3] (one score value per "
                                "entry of x)")


INTS = np.eye(2, DIMS, dtype=np.int32)  # as floats, fine points; as the solver's dtype, t truncates


def test_integer_data_is_a_one_line_user_error():
  sde = SDES["vp"]
  score = gaussian.gaussian_score(sde, MEAN, COV)
  for call, name in ((lambda: likelihood.ode_log_likelihood(sde, score, INTS, jax.random.key(0)),
                      "ode_log_likelihood"),
                     (lambda: likelihood.ode_bits_per_dim(sde, score, INTS, jax.random.key(0),
                                                          num_levels=3), "ode_bits_per_dim"),
                     (lambda: likelihood.dequantize(jax.random.key(0), INTS, 3), "dequantize")):
    with pytest.raises(UserError, match=f"^{name}: x has dtype int32; expected floating data"):
      call()


def test_bf16_data_is_solved_and_dequantised_in_float32():
  sde = SDES["vp"]
  score = gaussian.gaussian_score(sde, MEAN, COV)
  seen_time_dtypes = set()

  def recording_score(x, t):
    seen_time_dtypes.add(t.dtype)
    return score(x, t)

  solve = jax.jit(lambda x: likelihood.ode_log_likelihood(sde, recording_score, x,
                                                          jax.random.key(0), divergence="exact"))
  low = solve(jnp.asarray(INTS, jnp.bfloat16))
  assert seen_time_dtypes == {jnp.dtype(jnp.float32)}  # bf16 would round t near T by ~4e-3
  assert low.delta_logp.dtype == low.logp.dtype == jnp.float32
  np.testing.assert_array_equal(low.logp, solve(jnp.asarray(INTS, jnp.float32)).logp)
  # A bin's dequantisation noise survives: bf16's spacing at 0.9 (2^-8) is half a 256-level
  # bin, so in bf16 the noise would take about two values.
  noisy = likelihood.dequantize(jax.random.key(1), jnp.full((1, 1000), 0.9, jnp.bfloat16), 256)
  assert noisy.dtype == jnp.float32 and len(np.unique(np.asarray(noisy))) > 900

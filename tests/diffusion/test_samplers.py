"""Diffusion samplers against exact answers: Gaussian data N(m, C) with its exact score.

For p_0 = N(m, C) every p_t is Gaussian and gaussian.py gives its score, so a sampler's only
errors are its discretisation and Monte-Carlo noise. With n samples the sample mean and
covariance are off by about MC = sqrt(tr C / n) + sqrt((tr(C)^2 + tr(C^2)) / n) in norm;
samplers must land within 3 MC of (m, C) with many steps, and clearly further with few.
The probability-flow ODE is deterministic given x_T, so its solvers are compared pointwise
with a fine RK4 solution from the same x_T. On the SDE's own N-step grid the reverse-diffusion
step is score_sde's (SMLD's for VE, DDPM's for VP), checked step by step against its formulas.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.diffusion import controllable, gaussian, samplers
from genvis.diffusion import sde as sde_lib
from genvis.errors import UserError

MEAN = np.array([1.0, -0.5])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])  # correlated: an axis-wise sampler would fail
NUM_SAMPLES = 4000
MC = (np.sqrt(np.trace(COV) / NUM_SAMPLES)
      + np.sqrt((np.trace(COV)**2 + np.trace(COV @ COV)) / NUM_SAMPLES))  # ~0.05

VP = sde_lib.VPSDE()
VE = sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0)  # sigma_max >> the data's scale
SUB_VP = sde_lib.SubVPSDE()
RF = sde_lib.RectifiedFlow()
SDES = {"vp": VP, "ve": VE, "subvp": SUB_VP, "rf": RF}


def moment_error(x, mean=MEAN, cov=COV):
  """|sample mean - mean| + ||sample cov - cov||_F."""
  x = np.asarray(x, np.float64)
  return np.linalg.norm(x.mean(0) - mean) + np.linalg.norm(np.cov(x.T) - cov)


TRACES = collections.Counter()  # sde -> how often a sampler traced its score function


@functools.cache
def exact_score(sde):
  """One function object per SDE (jit compiles a sampler once per score function), which
  counts its traces: a recompile would add to TRACES[sde]."""
  score = gaussian.gaussian_score(sde, MEAN, COV)

  def counting_score(x, t):
    TRACES[sde] += 1
    return score(x, t)
  return counting_score


def check_trajectory(result, sde, rng, num_snapshots=3):
  """Snapshots run from x_T (the prior draw of rng) to the returned sample."""
  prior = sde.prior_sample(jax.random.split(rng)[0], result.x.shape)
  assert result.trajectory.shape == (num_snapshots, *result.x.shape)
  np.testing.assert_allclose(result.trajectory[0], prior, rtol=1e-6)  # jit vs eager: 1 ulp
  np.testing.assert_array_equal(result.trajectory[-1], result.x)
  assert not np.allclose(result.trajectory[1], result.trajectory[0], atol=1e-2)


@pytest.mark.parametrize("sde_name,predictor,corrector", [
    ("ve", "euler_maruyama", "none"),
    ("ve", "reverse_diffusion", "none"),   # SMLD's step
    ("subvp", "ancestral", "none"),        # a(t) < 1 and s(t) != sqrt(1 - a^2)
    ("ve", "ancestral", "none"),           # SMLD's ancestral step
    ("vp", "reverse_diffusion", "langevin"),  # DDPM's step; Langevin's alpha = 1 - beta
    ("rf", "ancestral", "none"),           # a(1) = 0: the grid starts at 1 - end_gap
])
def test_pc_samplers_reproduce_the_gaussian_and_converge(sde_name, predictor, corrector):
  sde, rng = SDES[sde_name], jax.random.key(0)
  errors = {}
  # The step count, eps and snr are traced: the second call must not retrace.
  for num_steps, eps, snr in ((10, 2 * sde.eps, 0.2), (400, None, 0.16)):
    result = samplers.pc_sampler(sde, exact_score(sde), (NUM_SAMPLES, 2), rng, num_steps,
                                 predictor=predictor, corrector=corrector, eps=eps, snr=snr,
                                 num_snapshots=3)
    if num_steps == 10:
      traces = TRACES[sde]
    errors[num_steps] = moment_error(result.x)
    assert int(result.nfe) == (2 if corrector != "none" else 1) * num_steps
    check_trajectory(result, sde, rng)
  assert TRACES[sde] == traces > 0
  # With 1e5 samples: 0.3 to 1.8 after 10 steps, < 0.06 after 200 (the bias falls as 1/N).
  assert errors[400] < 3 * MC, errors
  assert errors[10] > errors[400] + 3 * MC, errors


def score_sde_reverse_diffusion(sde, x, score, noise, index_shift=0):
  """score_sde's ReverseDiffusionPredictor on its native grid, in float64: step i (from
  t_i = T - i (T - eps) / (N - 1)) uses chain index j = N - 1 - i, x_mean = x - f + G^2 score
  and x = x_mean + G z, with SMLD's f = 0, G^2 = sigma_j^2 - sigma_{j-1}^2 (sigma_{-1} = 0)
  or DDPM's f = (sqrt(1 - beta_j) - 1) x, G^2 = beta_j."""
  index = np.clip(np.arange(sde.num_scales)[::-1] - index_shift, 0, sde.num_scales - 1)
  if isinstance(sde, sde_lib.VESDE):
    sigmas = np.asarray(sde.discrete_sigmas(), np.float64)
    previous = np.where(index == 0, 0.0, sigmas[np.maximum(index - 1, 0)])
    f, g2 = np.zeros_like(x), (sigmas[index]**2 - previous**2)[:, None]
  else:
    g2 = sde.discrete_betas()[index][:, None]
    f = (np.sqrt(1.0 - g2) - 1.0) * x
  x_mean = x - f + g2 * score
  return x_mean + np.sqrt(g2) * noise


@pytest.mark.parametrize("sde_name,tolerance", [("ve", 1e-3), ("vp", 0.06)])
def test_reverse_diffusion_is_score_sdes_step_on_the_native_grid(sde_name, tolerance):
  # With num_steps = num_scales the exact-transition step is SMLD's (VE: up to the eps
  # offset, ~1e-4 of a step) and DDPM's (VP: beta_i = beta(t_i) / N against the integral of
  # beta over the step, O(1/N^2) apart; 4.4 % of the step at worst, near t = 0 where beta_i
  # is smallest). One example per step i of the N-step chain.
  sde = SDES[sde_name]
  steps = sde.num_scales
  t = sde.T - np.arange(steps) * (sde.T - sde.eps) / (steps - 1)
  s = np.append(t[1:], 0.0)
  rng = jax.random.key(5)
  score_fn = gaussian.gaussian_score(sde, MEAN, COV)

  @jax.jit
  def step(x, t, s):
    return samplers.reverse_diffusion(sde, score_fn, x, t, s, rng)[0], score_fn(x, t)

  _, std = sde.marginal_prob(jnp.zeros((steps, 1)), jnp.asarray(t, jnp.float32))
  x = np.asarray(jax.random.normal(jax.random.key(6), (steps, 2)) * std[:, None])
  ours, score = (np.asarray(v, np.float64) for v in step(x, t.astype(np.float32),
                                                          s.astype(np.float32)))
  noise = np.asarray(jax.random.normal(rng, x.shape), np.float64)
  x = x.astype(np.float64)
  step_size = np.abs(ours - x).max(axis=1)
  gap = np.abs(ours - score_sde_reverse_diffusion(sde, x, score, noise)).max(axis=1)
  assert np.max(gap / step_size) < tolerance
  if sde_name == "ve":  # an off-by-one chain index is ~100x further off
    shifted = score_sde_reverse_diffusion(sde, x, score, noise, index_shift=1)
    assert np.max(np.abs(ours - shifted).max(axis=1) / step_size) > 0.5


@pytest.fixture(scope="module")
def ode_reference():
  """RK4 with 400 steps from the x_T of rng 0: the ODE's answer to ~1e-5 (float32)."""
  return np.asarray(samplers.ode_sampler(VP, exact_score(VP), (NUM_SAMPLES, 2),
                                         jax.random.key(0), 400, solver="rk4",
                                         num_snapshots=3).x)


@pytest.mark.parametrize("solver,min_ratio", [("euler", 5), ("heun", 30), ("rk4", 10)])
def test_fixed_step_ode_converges_at_its_order(ode_reference, solver, min_ratio):
  # 10x the steps divides the error by ~10 (Euler), ~100 (Heun); RK4 hits float32 at ~1e-5.
  errors, rng = {}, jax.random.key(0)
  for num_steps in (20, 200):
    result = samplers.ode_sampler(VP, exact_score(VP), (NUM_SAMPLES, 2), rng, num_steps,
                                  solver=solver, num_snapshots=3)
    if num_steps == 20:
      traces = TRACES[VP]
    errors[num_steps] = np.abs(np.asarray(result.x) - ode_reference).max()
    assert int(result.nfe) == {"euler": 1, "heun": 2, "rk4": 4}[solver] * num_steps
    check_trajectory(result, VP, rng)
  assert TRACES[VP] == traces
  assert errors[20] > min_ratio * errors[200], errors
  assert moment_error(ode_reference) < 3 * MC


def test_adaptive_ode_counts_its_evaluations_and_follows_its_tolerance(ode_reference):
  calls = []
  exact = exact_score(VP)

  def counted_score(x, t):  # counts evaluations at run time, not traces
    jax.debug.callback(lambda: calls.append(1))
    return exact(x, t)

  results = {}
  for tol in (1e-2, 1e-5):
    calls.clear()
    results[tol] = samplers.adaptive_ode_sampler(VP, counted_score, (NUM_SAMPLES, 2),
                                                 jax.random.key(0), rtol=tol, atol=tol)
    assert int(results[tol].nfe) == len(calls) > 0
  assert int(results[1e-2].nfe) < int(results[1e-5].nfe)
  gaps = {tol: np.abs(np.asarray(r.x) - ode_reference).max() for tol, r in results.items()}
  assert gaps[1e-5] < 1e-3 < gaps[1e-2], gaps
  assert moment_error(results[1e-5].x) < 3 * MC


# Inpainting: d = 3, the last coordinate known.
INPAINT_MEAN = np.array([0.5, -0.5, 1.0])
INPAINT_COV = np.array([[1.0, 0.3, 0.6], [0.3, 0.8, -0.4], [0.6, -0.4, 1.0]])
KNOWN_VALUE = 2.5  # 1.5 std above its mean, so conditioning moves the others a lot


def replacement_limit_mean(known_value, num_steps=1000):
  """Mean of the unknown coordinates under the replacement sampler, in the continuous limit.

  VP on Gaussian data: the score is -P_t (x - a m), P_t = (a^2 C + s^2 I)^{-1}, and the known
  coordinate k_t is a fresh draw with mean a k, independent of the unknown u_t. So the mean M
  of u follows the reverse SDE's drift with k_t at its mean:
  dM/dt = -beta M / 2 + beta [P_uu (M - a m_u) + P_uk a (k - m_k)], from M(T) = 0 to t = 0.
  (The exact conditional mean m_u + C_uk C_kk^{-1} (k - m_k) differs: see controllable.py.)
  """
  u, k = [0, 1], [2]
  beta_min, beta_max = VP.beta_min, VP.beta_max

  def drift(t, mean):
    beta = beta_min + t * (beta_max - beta_min)
    a = np.exp(-0.5 * (beta_min * t + 0.5 * (beta_max - beta_min) * t**2))
    precision = np.linalg.inv(a**2 * INPAINT_COV + (1 - a**2) * np.eye(3))
    pull = (precision[np.ix_(u, u)] @ (mean - a * INPAINT_MEAN[u])
            + precision[np.ix_(u, k)][:, 0] * a * (known_value - INPAINT_MEAN[2]))
    return -0.5 * beta * mean + beta * pull

  mean, h = np.zeros(2), -VP.T / num_steps
  for t in np.linspace(VP.T, 0.0, num_steps + 1)[:-1]:  # RK4
    k1 = drift(t, mean)
    k2 = drift(t + h / 2, mean + h / 2 * k1)
    k3 = drift(t + h / 2, mean + h / 2 * k2)
    mean = mean + h / 6 * (k1 + 2 * k2 + 2 * k3 + drift(t + h, mean + h * k3))
  return mean


def test_inpainting_keeps_the_known_entries_and_follows_the_replacement_law():
  # score_sde's replacement inpainting is not exact conditioning (controllable.py), so the
  # unknown entries are held to the replacement scheme's own limit, derived independently
  # above, not to the exact conditional Gaussian, which it misses by ~20 standard errors.
  data = np.zeros((NUM_SAMPLES, 3), np.float32)
  data[:, 2] = KNOWN_VALUE
  data[:, :2] = 99.0  # ignored where the mask is 0
  result = controllable.inpainting_sampler(
      VP, gaussian.gaussian_score(VP, INPAINT_MEAN, INPAINT_COV), data, np.array([0, 0, 1]),
      jax.random.key(1), 200, predictor="euler_maruyama", corrector="none")
  x = np.asarray(result.x)
  np.testing.assert_array_equal(x[:, 2], KNOWN_VALUE)
  unknown = x[:, :2]
  standard_error = unknown.std(0) / np.sqrt(NUM_SAMPLES)
  # ~1.16, -1.03 (the exact conditional: 1.40, -1.10; unconditional: 0.5, -0.5). 200 steps
  # are within 0.01 of the limit (checked with 1e5 samples).
  limit = replacement_limit_mean(KNOWN_VALUE)
  np.testing.assert_array_less(np.abs(unknown.mean(0) - limit), 4 * standard_error + 0.01)


def test_colorization_keeps_the_grey_level_exactly():
  colour = np.random.default_rng(0).multivariate_normal(INPAINT_MEAN, INPAINT_COV, 64)
  grey = np.repeat(colour.mean(-1, keepdims=True), 3, axis=-1)  # 64 RGB "pixels", greyed
  result = controllable.colorization_sampler(
      VP, gaussian.gaussian_score(VP, INPAINT_MEAN, INPAINT_COV), grey, jax.random.key(2), 50,
      corrector="none")
  np.testing.assert_allclose(result.x.mean(-1), grey[:, 0], atol=1e-5)
  # The chroma was filled in, not left at grey (the data's own |colour - grey| is 0.78).
  assert np.abs(result.x - grey).mean() > 0.3
  np.testing.assert_allclose(controllable.COLOR_BASIS.T @ controllable.COLOR_BASIS, np.eye(3),
                             atol=1e-6)


def test_conditional_score_of_a_bayes_classifier_is_the_class_score():
  # Two classes N(m_y, C): p_t(y | x) is exact from the class densities, and
  # score + grad log p_t(y | x) must equal class y's own score.
  sde, means = VE, np.array([[1.0, -0.5], [-1.0, 1.0]])
  mixture = gaussian.gaussian_mixture_score(sde, [0.5, 0.5], means, [COV, COV])

  def classifier(x, t):
    return jnp.stack([gaussian.gaussian_logp(sde, m, COV)(x, t) for m in means], axis=-1)

  @jax.jit
  def scores(x, t, labels):
    guided, unguided = (controllable.conditional_score(mixture, classifier, labels, scale)(x, t)
                        for scale in (1.0, 0.0))
    class_scores = [gaussian.gaussian_score(sde, m, COV)(x, t) for m in means]
    return guided, unguided, mixture(x, t), jnp.where(labels[:, None] == 0, *class_scores)

  x = gaussian.sample_gaussian(jax.random.key(4), [0.0, 0.0], 4 * COV, 6)
  t = jnp.array([0.01, 0.1, 0.3, 0.5, 0.7, 0.9])
  guided, unguided, unconditional, class_score = scores(x, t, jnp.array([0, 1, 0, 1, 1, 0]))
  np.testing.assert_allclose(guided, class_score, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(unguided, unconditional, rtol=1e-6)
  assert np.abs(guided - unconditional).max() > 1.0  # the guidance term is not ~0


@pytest.mark.parametrize("call,message", [
    (lambda: samplers.pc_sampler(VP, exact_score(VP), (4, 2), jax.random.key(0), 10,
                                 predictor="heun"), "predictor='heun'"),
    (lambda: samplers.pc_sampler(VP, exact_score(VP), (4, 2), jax.random.key(0), 10,
                                 predictor="none", corrector="none"), "nothing would move"),
    (lambda: samplers.pc_sampler(VP, exact_score(VP), (4, 2), jax.random.key(0), 1),
     "num_steps=1"),
    (lambda: samplers.pc_sampler(VP, exact_score(VP), (4,), jax.random.key(0), 10),
     "sample shape"),
    (lambda: samplers.ode_sampler(VP, exact_score(VP), (4, 2), jax.random.key(0), 10,
                                  eps=1.5), "eps=1.5"),
    (lambda: samplers.pc_sampler(VP, exact_score(VP), (4, 2), jax.random.key(0), 10,
                                 num_snapshots=1), "num_snapshots=1 (config.sample.num_snapshots)"),
    (lambda: samplers.pc_sampler(RF, exact_score(RF), (4, 2), jax.random.key(0), 10,
                                 eps=0.9995), "sampling_start=0.999"),
    (lambda: samplers.adaptive_ode_sampler(VP, exact_score(VP), (4, 2), jax.random.key(0),
                                           rtol=0.0), "rtol=0.0"),
    (lambda: controllable.inpainting_sampler(VP, exact_score(VP), np.zeros((4, 2)),
                                             np.ones((3,)), jax.random.key(0), 10), "mask"),
    (lambda: controllable.colorization_sampler(VP, exact_score(VP), np.zeros((4, 2)),
                                               jax.random.key(0), 10), "[B, ..., 3]"),
])
def test_mistakes_are_one_line_user_errors(call, message):
  with pytest.raises(UserError) as error:
    call()
  assert message in str(error.value)


@pytest.mark.parametrize("sampler", ["pc_sampler", "ode_sampler", "adaptive_ode_sampler",
                                     "inpainting_sampler"])
def test_a_score_of_the_wrong_shape_is_a_one_line_user_error(sampler):
  """Not a broadcast (a [B] score for [B, d] data with d == B sampled silently) nor an XLA
  error from inside the loop ("carry input and carry output must have equal types")."""
  run = {
      "pc_sampler": lambda fn, shape: samplers.pc_sampler(VP, fn, shape, jax.random.key(0), 5),
      "ode_sampler": lambda fn, shape: samplers.ode_sampler(VP, fn, shape, jax.random.key(0), 5),
      "adaptive_ode_sampler": lambda fn, shape: samplers.adaptive_ode_sampler(
          VP, fn, shape, jax.random.key(0)),
      "inpainting_sampler": lambda fn, shape: controllable.inpainting_sampler(
          VP, fn, np.zeros(shape), np.ones(shape[1:]), jax.random.key(0), 5),
  }[sampler]
  weight = jnp.ones(())  # traced, as a network's parameters are
  wrong = {(4, 3, 3, 1): [(lambda x, t: -x[..., 0], [4, 3, 3]),  # the channel dim dropped
                          (lambda x, t: jnp.zeros(x.shape[:1]), [4])],
           (3, 3): [(lambda w, x, t: w * x[:, 0], [3])]}  # one value per example, d == B
  where = "pc_sampler" if sampler == "inpainting_sampler" else sampler
  for shape, cases in wrong.items():
    for fn, got in cases:
      fn = jax.tree_util.Partial(fn, weight) if shape == (3, 3) else fn
      with pytest.raises(UserError) as error:
        run(fn, shape)
      assert str(error.value) == (f"{where}: the score function returned shape {got}; expected "
                                  f"one array of x's shape {list(shape)} (one score value per "
                                  "entry of x)")


def test_the_score_shape_check_adds_nothing_to_the_compiled_samplers(monkeypatch):
  """check_output_shape runs on shapes while jit traces: the programs are the same without."""
  score = jax.tree_util.Partial(gaussian.gaussian_score(VP, MEAN, COV))  # not in TRACES
  common = dict(num_snapshots=0, shape=(4, 2), denoise=True)
  pc = functools.partial(samplers._pc_sample, VP, score, predictor="reverse_diffusion",
                         corrector="langevin", **common)
  ode = functools.partial(samplers._ode_sample, VP, score, solver="rk4", **common)
  rng = jax.random.key(0)
  programs = lambda: (str(jax.make_jaxpr(pc)(rng, 10, 0.16, 1, 1e-3)),
                      str(jax.make_jaxpr(ode)(rng, 10, 1e-3)))
  checked = programs()
  monkeypatch.setattr(samplers, "check_output_shape", lambda *args, **kwargs: None)
  jax.clear_caches()
  assert programs() == checked

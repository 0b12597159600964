"""Diffusion losses against exact answers.

For Gaussian data N(m, C) the exact score of p_t is known, and the denoising score-matching
loss it reaches is the floor derived in gaussian.denoising_loss_floor (per eigenvalue c of C,
a^2 c / (a^2 c + s^2) under the s^2 weighting, times g^2 / s^2 under the likelihood
weighting). Monte Carlo over 4,096 examples must land within 4 standard errors of it; a
score that is off by a factor must not. The discrete losses are zero at the exact noise /
score / velocity of a point mass, and reduce="sum" is d times reduce="mean".
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis.diffusion import gaussian, losses, sde as sde_lib
from genvis.errors import UserError

NUM_EXAMPLES = 4096
DIMS = 3
MEAN = np.array([0.5, -1.0, 0.2], np.float32)
_A = np.random.default_rng(0).normal(size=(DIMS, DIMS))
COV = (_A @ _A.T / DIMS + 0.2 * np.eye(DIMS)).astype(np.float32)
FIXED_T = 0.3
SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE()}


def _floor_over_time(sde, eps=1e-5, points=4001):
  """E_t~U(eps, T) of the s^2-weighted floor, by the trapezoid rule on a fine grid."""
  times = jnp.linspace(eps, sde.T, points)
  floor = np.asarray(gaussian.denoising_loss_floor(sde, COV, times), np.float64)
  return float(np.sum((floor[1:] + floor[:-1]) / 2) / (points - 1))


@pytest.fixture(scope="module", params=list(SDES))
def dsm_run(request):
  """One compiled evaluation per SDE of everything the DSM tests look at."""
  sde = SDES[request.param]
  score = gaussian.gaussian_score(sde, MEAN, COV)
  half_score = lambda x, t: 0.5 * score(x, t)

  @jax.jit
  def run(rng):
    data_rng, loss_rng, t_rng, noise_rng = jax.random.split(rng, 4)
    x0 = gaussian.sample_gaussian(data_rng, MEAN, COV, NUM_EXAMPLES)
    t = jax.random.uniform(t_rng, (NUM_EXAMPLES,), minval=1e-5, maxval=sde.T)
    noise = jax.random.normal(noise_rng, x0.shape)
    fixed_t = jnp.full((NUM_EXAMPLES,), FIXED_T)
    return {
        "loss": losses.dsm_loss(sde, score, x0, loss_rng),
        "loss_sum": losses.dsm_loss(sde, score, x0, loss_rng, reduce="sum"),
        "per_example": losses.dsm_per_example(sde, score, x0, t, noise),
        "per_example_half": losses.dsm_per_example(sde, half_score, x0, t, noise),
        "likelihood": losses.dsm_per_example(sde, score, x0, fixed_t, noise,
                                             weighting="likelihood"),
        "likelihood_floor": gaussian.denoising_loss_floor(sde, COV, fixed_t[:1],
                                                          weighting="likelihood"),
    }

  return sde, jax.tree.map(np.asarray, run(jax.random.key(1)))


def test_dsm_loss_with_the_exact_score_sits_on_the_closed_form_floor(dsm_run):
  sde, out = dsm_run
  floor = _floor_over_time(sde)
  standard_error = out["per_example"].std() / np.sqrt(NUM_EXAMPLES)
  assert out["loss"].shape == ()
  assert abs(float(out["loss"]) - floor) < 4 * standard_error, (out["loss"], floor)
  assert abs(out["per_example"].mean() - floor) < 4 * standard_error
  # Halving the score must cost clearly more than the floor (the test can fail).
  assert out["per_example_half"].mean() > floor + 4 * standard_error


def test_likelihood_weighted_dsm_floor_at_fixed_time(dsm_run):
  _, out = dsm_run
  floor = float(out["likelihood_floor"][0])
  standard_error = out["likelihood"].std() / np.sqrt(NUM_EXAMPLES)
  assert abs(out["likelihood"].mean() - floor) < 4 * standard_error, (out["likelihood"].mean(),
                                                                      floor)


def test_dsm_sum_is_dims_times_mean(dsm_run):
  _, out = dsm_run
  np.testing.assert_allclose(out["loss_sum"], DIMS * out["loss"], rtol=1e-5)


def test_floor_reductions_and_weightings():
  vp = SDES["vp"]
  t = jnp.array([0.1, 0.7])

  @jax.jit
  def evaluate(t):
    return (gaussian.denoising_loss_floor(vp, COV, t),
            gaussian.denoising_loss_floor(vp, COV, t, reduce="sum"),
            gaussian.denoising_loss_floor(vp, COV, t, "likelihood"),
            vp.sde(jnp.ones((2, 1)), t)[1], vp.marginal_prob(jnp.ones((2, 1)), t)[1])

  mean_floor, sum_floor, likelihood_floor, diffusion, std = evaluate(t)
  np.testing.assert_allclose(sum_floor, DIMS * mean_floor, rtol=1e-6)
  np.testing.assert_allclose(likelihood_floor, mean_floor * diffusion**2 / std**2, rtol=1e-5)
  assert np.all((np.asarray(mean_floor) > 0) & (np.asarray(mean_floor) < 1))


POINT = 0.5  # point-mass data: every example is this constant, so the exact answers are known
X0 = jnp.full((16, 2, 2, 1), POINT)  # d = 4


def _discrete_losses(name, reduce):
  vp, ve, flow = sde_lib.VPSDE(), sde_lib.VESDE(), sde_lib.RectifiedFlow()
  alpha_bar = jnp.asarray(vp.alphas_cumprod(), jnp.float32)
  rng = jax.random.key(3)

  def exact_noise(x, t):  # x = sqrt(alpha-bar) c + sqrt(1 - alpha-bar) z
    ab = alpha_bar[vp.timestep_index(t)][:, None, None, None]
    return (x - jnp.sqrt(ab) * POINT) / jnp.sqrt(1 - ab)

  def off_by_one_noise(x, t):
    ab = alpha_bar[jnp.minimum(vp.timestep_index(t) + 1, 999)][:, None, None, None]
    return (x - jnp.sqrt(ab) * POINT) / jnp.sqrt(1 - ab)

  def exact_score(x, t):  # p_sigma = N(c, sigma^2 I)
    return -(x - POINT) / ve.sigma(t)[:, None, None, None]**2

  def exact_velocity(x, t):  # x = (1 - t) c + t z, v = z - c = (x - c) / t
    return (x - POINT) / t[:, None, None, None]

  zeros = lambda x, t: jnp.zeros_like(x)
  return {
      "ddpm": lambda: losses.ddpm_loss(vp, exact_noise, X0, rng, reduce=reduce),
      "ddpm_off_by_one": lambda: losses.ddpm_loss(vp, off_by_one_noise, X0, rng, reduce=reduce),
      "ddpm_zero": lambda: losses.ddpm_loss(vp, zeros, X0, rng, reduce=reduce),
      "smld": lambda: losses.smld_loss(ve, exact_score, X0, rng, reduce=reduce),
      "smld_zero": lambda: losses.smld_loss(ve, zeros, X0, rng, reduce=reduce),
      "flow": lambda: losses.flow_matching_loss(flow, exact_velocity, X0, rng, reduce=reduce),
      "flow_logit_normal": lambda: losses.flow_matching_loss(
          flow, exact_velocity, X0, rng, reduce=reduce, time_sampling="logit_normal"),
      "flow_zero": lambda: losses.flow_matching_loss(flow, zeros, X0, rng, reduce=reduce),
  }[name]()


@pytest.fixture(scope="module")
def discrete_losses():
  names = ["ddpm", "ddpm_off_by_one", "ddpm_zero", "smld", "smld_zero", "flow",
           "flow_logit_normal", "flow_zero"]
  run = jax.jit(lambda: {(name, reduce): _discrete_losses(name, reduce)
                         for name in names for reduce in ("mean", "sum")})
  return jax.tree.map(np.asarray, run())


@pytest.mark.parametrize("name", ["ddpm", "smld", "flow", "flow_logit_normal"])
def test_discrete_losses_vanish_at_the_exact_prediction(discrete_losses, name):
  loss = discrete_losses[(name, "mean")]
  assert loss.shape == () and loss.dtype == np.float32
  assert float(loss) < 1e-8


@pytest.mark.parametrize("name", ["ddpm_zero", "smld_zero", "flow_zero", "ddpm"])
def test_discrete_losses_sum_is_dims_times_mean(discrete_losses, name):
  mean, total = discrete_losses[(name, "mean")], discrete_losses[(name, "sum")]
  if name != "ddpm":  # the exact answer gives 0 = 4 * 0 up to rounding
    assert float(mean) > 0.1
    np.testing.assert_allclose(total, 4 * mean, rtol=1e-5)
  else:
    assert float(total) < 4e-8


def test_ddpm_loss_sees_an_off_by_one_noise_schedule(discrete_losses):
  # The exact schedule leaves ~1e-14 (rounding); one step off leaves ~2e-5 on these draws.
  assert float(discrete_losses[("ddpm_off_by_one", "mean")]) > 1e-6


def test_loss_mistakes_raise_user_errors():
  vp, ve = sde_lib.VPSDE(), sde_lib.VESDE()
  rng = jax.random.key(0)
  score = lambda x, t: x
  with pytest.raises(UserError, match="weighting"):
    losses.dsm_loss(vp, score, X0, rng, weighting="snr")
  with pytest.raises(UserError, match="reduce"):
    losses.dsm_loss(vp, score, X0, rng, reduce="max")
  with pytest.raises(UserError, match="needs a VPSDE"):
    losses.ddpm_loss(ve, score, X0, rng)
  with pytest.raises(UserError, match="needs a VPSDE"):
    losses.ddpm_loss(sde_lib.SubVPSDE(), score, X0, rng)
  with pytest.raises(UserError, match="needs a VESDE"):
    losses.smld_loss(vp, score, X0, rng)
  with pytest.raises(UserError, match="needs a RectifiedFlow"):
    losses.flow_matching_loss(vp, score, X0, rng)
  with pytest.raises(UserError, match="time_sampling"):
    losses.flow_matching_loss(sde_lib.RectifiedFlow(), score, X0, rng, time_sampling="beta")
  with pytest.raises(UserError, match="at least one data dim"):
    losses.dsm_loss(vp, score, jnp.ones(4), rng)
  # VP's and sub-VP's std vanishes at t = 0: the s^2 / g^2 weightings would divide by it.
  for eps in (0.0, -1e-3, 1.0):
    with pytest.raises(UserError, match=f"dsm_loss: eps={eps}"):
      losses.dsm_loss(sde_lib.SubVPSDE(), score, X0, rng, eps=eps)


# A net whose output lost the channel dim ([B, H, W]) or is one value per example ([B]):
# both broadcast against x [B, H, W, 1] (or [B, d] with d == B) into a finite, wrong loss.
WRONG_OUTPUTS = {"[B,H,W]": lambda x, t: -x[..., 0], "[B]": lambda x, t: jnp.zeros(x.shape[:1])}


@pytest.mark.parametrize("wrong", list(WRONG_OUTPUTS))
@pytest.mark.parametrize("loss,sde,role", [
    (losses.dsm_loss, sde_lib.VPSDE(), "score"),
    (losses.ddpm_loss, sde_lib.VPSDE(), "noise prediction"),
    (losses.smld_loss, sde_lib.VESDE(), "score"),
    (losses.flow_matching_loss, sde_lib.RectifiedFlow(), "velocity"),
])
def test_a_network_output_of_the_wrong_shape_is_a_one_line_user_error(loss, sde, role, wrong):
  net = WRONG_OUTPUTS[wrong]
  digits, toy = jnp.ones((8, 8, 8, 1)), jnp.ones((3, 3))  # 8 digits 8x8x1; 2-D toy, d == B
  for x0, jit in ((digits, False), (toy, False), (digits, True)):  # jit: at trace time
    call = lambda x0: loss(sde, net, x0, jax.random.key(0))
    with pytest.raises(UserError) as error:
      (jax.jit(call) if jit else call)(x0)
    got = list(net(x0, jnp.zeros(x0.shape[:1])).shape)
    assert str(error.value) == (f"{loss.__name__}: the {role} function returned shape {got}; "
                                f"expected one array of x's shape {list(x0.shape)} (one {role} "
                                "value per entry of x)")

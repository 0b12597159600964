"""Score networks: the DDPM/DDPM++ U-Net and the toy MLP (shapes, conditioning, skip
rescaling, where attention sits, parameter counts against closed forms and DDPM's published
35.7M, config errors) and a short DSM training run of the MLP on a 2-D Gaussian."""

import dataclasses
import functools
import json
import math
from types import SimpleNamespace

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from genvis.diffusion import gaussian, losses
from genvis.diffusion.sde import VPSDE
from genvis.errors import UserError
from genvis.models import score_mlp, unet
from genvis.train.mesh import DEFAULT_RULES, batch_sharding, logical_shardings, make_mesh

# 16x16 RGB, BigGAN resampling, Fourier features, three classes and output division by std:
# the branches the "cpu" size leaves out.
RGB16 = dict(image_size=16, channels=3, base_width=16, channel_mult=(1, 2),
             num_res_blocks=1, attention_resolutions=(8,), resblock="biggan",
             time_embedding="fourier", time_scale=1.0, num_classes=3, scale_by_sigma=True,
             dropout=0.0)


def unet_config(variant="cpu", **overrides) -> unet.UNetConfig:
  return unet.UNetConfig(**unet.config_for(variant, **overrides))


def random_params(config, abstract_params, seed=0):
  """Random parameters of the model's shapes, drawn in numpy: a jitted `init` of the U-Net
  compiles every random initialiser (tens of seconds on 2 CPU cores). Kernels are scaled by
  1/sqrt(fan-in) and every other leaf is drawn around its usual value, so the residual
  branches and the output conv are not ~0 as at init and the output depends on the inputs."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    values = rng.normal(size=leaf.shape)
    if name == "kernel":
      values /= math.sqrt(math.prod(leaf.shape[:-1]))
    elif name == "scale":
      values = 1 + 0.1 * values
    elif name == "bias":
      values *= 0.1
    elif name == "frequencies":
      values *= config.fourier_scale
    return jnp.asarray(values, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract_params(config))


class Compiled:
  """A model with random parameters and its apply function, compiled once per module."""

  def __init__(self, config, model_cls, abstract_params):
    self.config, self.model = config, model_cls(config)
    self.params = random_params(config, abstract_params)
    self.apply = jax.jit(lambda params, x, t, **kw: self.model.apply({"params": params}, x, t,
                                                                      **kw))


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope="module")
def cpu_unet():
  return Compiled(unet_config(), unet.UNet, unet.abstract_params)


@pytest.fixture(scope="module")
def rgb_unet():
  return Compiled(unet.UNetConfig(**RGB16), unet.UNet, unet.abstract_params)


def test_unet_output_has_the_input_shape(cpu_unet, rgb_unet):
  x, t = images((2, 8, 8, 1)), jnp.array([0.1, 0.9])
  out = cpu_unet.apply(cpu_unet.params, x, t)
  chex.assert_shape(out, (2, 8, 8, 1))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  assert float(jnp.std(out)) > 1e-2

  x = images((2, 16, 16, 3))
  out = rgb_unet.apply(rgb_unet.params, x, t, std=jnp.ones(2), labels=jnp.array([0, 2]))
  chex.assert_shape(out, (2, 16, 16, 3))
  chex.assert_tree_all_finite(out)


def test_unet_output_depends_on_time_and_class_and_divides_by_std(cpu_unet, rgb_unet):
  x = jnp.broadcast_to(images((1, 8, 8, 1)), (2, 8, 8, 1))
  out = cpu_unet.apply(cpu_unet.params, x, jnp.array([0.1, 0.9]))
  # Same image, different times: different outputs.
  assert float(jnp.mean(jnp.abs(out[0] - out[1]))) > 0.05 * float(jnp.mean(jnp.abs(out)))

  x = jnp.broadcast_to(images((1, 16, 16, 3)), (2, 16, 16, 3))
  t = jnp.array([0.3, 0.3])
  run = lambda labels, std: rgb_unet.apply(rgb_unet.params, x, t, std=std,
                                           labels=jnp.array(labels))
  by_class = run([0, 1], jnp.ones(2))
  assert (float(jnp.mean(jnp.abs(by_class[0] - by_class[1])))
          > 0.05 * float(jnp.mean(jnp.abs(by_class))))
  # With time_input="time", std enters only as the output's divisor (scale_by_sigma).
  np.testing.assert_allclose(run([0, 1], jnp.array([2.0, 0.5])),
                             by_class / jnp.array([2.0, 0.5])[:, None, None, None],
                             rtol=1e-5, atol=1e-6)


def test_init_scale_zero_starts_residual_branches_at_zero():
  # DDPM++'s init_scale=0 (score_sde's 1e-10 variance scale): a block starts as its
  # shortcut, here the identity over sqrt(2), while its first layer is a normal one.
  config = unet_config()
  x, temb = images((1, 4, 4, 64), seed=5), images((1, 128), seed=6)

  @jax.jit
  def init_both(rng):
    return (unet.ResBlock(config, 64).init_with_output(rng, x, temb, False),
            unet.AttentionBlock(config).init_with_output(rng, x))

  for (out, variables), first, last in zip(init_both(jax.random.key(0)),
                                           ("conv_0", "query"), ("conv_1", "out")):
    params = nn.meta.unbox(variables["params"])
    assert float(jnp.max(jnp.abs(params[last]["kernel"]))) < 1e-4
    assert float(jnp.std(params[first]["kernel"])) > 1e-2
    np.testing.assert_allclose(out, x / math.sqrt(2), atol=1e-3)


def test_skip_rescale_divides_each_residual_sum_by_sqrt2(cpu_unet):
  # One block with and without rescaling, same parameters: exactly a factor sqrt(2) apart.
  block_params = cpu_unet.params["mid_block_0"]
  x, temb = images((2, 4, 4, 64), seed=3), images((2, 128), seed=4)
  outputs = {}
  for rescale in (True, False):
    config = dataclasses.replace(cpu_unet.config, skip_rescale=rescale)
    block = unet.ResBlock(config, 64)
    outputs[rescale] = jax.jit(lambda p, b=block: b.apply({"params": p}, x, temb, False))(
        block_params)
  np.testing.assert_allclose(outputs[True] * math.sqrt(2), outputs[False], rtol=1e-5,
                             atol=1e-5)
  assert float(jnp.max(jnp.abs(outputs[True] - outputs[False]))) > 0.1


def test_unet_logical_axes_shard_it_over_fsdp_and_tensor_axes(cpu_unet):
  # The trainer shards parameters by their logical names; lowering the step under the mesh
  # and rules resolves every name and activation constraint (a bad or duplicated name fails
  # here). Lowering, not compiling: XLA's results do not depend on the sharding, and a
  # sharded compile of the U-Net costs several seconds of this suite's budget.
  mesh = make_mesh(SimpleNamespace(shape=(1, 4, 2)))
  boxed = jax.eval_shape(lambda: cpu_unet.model.init(jax.random.key(0), jnp.zeros(
      (1, 8, 8, 1)), jnp.zeros(1)))["params"]
  shardings = logical_shardings(boxed, mesh, DEFAULT_RULES)
  spec = lambda *path: tuple(functools.reduce(dict.__getitem__, path, shardings).spec)
  assert spec("down_1", "block_0", "conv_1", "kernel") == (None, None, "fsdp", "tensor")
  assert spec("mid_attn", "out", "kernel") == ("tensor", "fsdp")
  assert spec("conv_in", "kernel") == (None, None, None, "tensor")
  params = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                                                    sharding=sharding),
                        nn.meta.unbox(boxed), shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    batch = jax.ShapeDtypeStruct((8, 8, 8, 1), jnp.float32,
                                 sharding=batch_sharding(mesh, DEFAULT_RULES))
    lowered = jax.jit(lambda p, x, t: cpu_unet.model.apply({"params": p}, x, t)).lower(
        params, batch, jax.ShapeDtypeStruct((8,), jnp.float32))
  assert "sharding" in lowered.as_text()


def attention_modules(params) -> dict:
  """{down_i / up_i: its attention modules' names} for the levels that have any."""
  found = {group: sorted(name for name in modules if name.startswith("attn"))
           for group, modules in params.items() if group.startswith(("down_", "up_"))}
  return {group: names for group, names in found.items() if names}


def test_attention_params_exist_only_at_the_configured_resolutions():
  # Levels 0, 1, 2 have resolutions 16, 8, 4; attend at 16 and 4 (and always in the middle).
  config = unet.UNetConfig(**{**RGB16, "channel_mult": (1, 2, 2), "num_res_blocks": 2,
                              "attention_resolutions": (16, 4)})
  params = unet.abstract_params(config)
  assert attention_modules(params) == {
      "down_0": ["attn_0", "attn_1"], "down_2": ["attn_0", "attn_1"],
      "up_0": ["attn"], "up_2": ["attn"]}
  assert "mid_attn" in params
  assert params["down_0"]["attn_0"]["query"]["kernel"].shape == (16, 16)
  # The original DDPM attends after every ResBlock of the up path.
  params = unet.abstract_params(dataclasses.replace(config, attention_every_up_block=True))
  assert attention_modules(params)["up_2"] == ["attn_0", "attn_1", "attn_2"]


def closed_form_unet_params(cfg: unet.UNetConfig) -> int:
  """The U-Net's parameter count written from the architecture (score_sde's ncsnpp.py /
  ddpm.py), not from genvis's module tree."""
  nf, last = cfg.base_width, len(cfg.channel_mult) - 1
  temb = 4 * nf if cfg.conditional or cfg.num_classes else 0
  conv = lambda cin, cout: 9 * cin * cout + cout
  dense = lambda cin, cout: cin * cout + cout

  def resblock(cin, cout, resample=False):
    count = 2 * cin + conv(cin, cout) + 2 * cout + conv(cout, cout)
    count += dense(temb, cout) if temb else 0
    return count + (dense(cin, cout) if cin != cout or resample else 0)

  attention = lambda c: 2 * c + 4 * dense(c, c)
  resample = lambda c: (resblock(c, c, True) if cfg.resblock == "biggan"
                        else conv(c, c) if cfg.resamp_with_conv else 0)
  total = conv(cfg.channels, nf) + 2 * nf * cfg.channel_mult[0] + conv(nf * cfg.channel_mult[0],
                                                                      cfg.channels)
  if cfg.conditional:
    fourier = cfg.time_embedding == "fourier"
    total += (nf if fourier else 0) + dense(2 * nf if fourier else nf, temb) + dense(temb, temb)
  total += (cfg.num_classes + 1) * temb if cfg.num_classes else 0
  width, skips = nf, [nf]
  for level, mult in enumerate(cfg.channel_mult):
    attends = cfg.image_size // 2**level in cfg.attention_resolutions
    for _ in range(cfg.num_res_blocks):
      total += resblock(width, nf * mult) + (attention(nf * mult) if attends else 0)
      width = nf * mult
      skips.append(width)
    if level != last:
      total += resample(width)
      skips.append(width)
  total += 2 * resblock(width, width) + attention(width)
  for level in reversed(range(last + 1)):
    attends = cfg.image_size // 2**level in cfg.attention_resolutions
    for _ in range(cfg.num_res_blocks + 1):
      total += resblock(width + skips.pop(), nf * cfg.channel_mult[level])
      width = nf * cfg.channel_mult[level]
      total += attention(width) if attends and cfg.attention_every_up_block else 0
    total += attention(width) if attends and not cfg.attention_every_up_block else 0
    total += resample(width) if level else 0
  return total


@pytest.mark.parametrize("config", [
    unet_config("cpu"),
    unet.UNetConfig(**RGB16),
    unet.UNetConfig(**{**RGB16, "conditional": False, "resblock": "ddpm",
                       "resamp_with_conv": False}),
    unet_config("ddpmpp-cifar10"),
], ids=["cpu", "rgb16-biggan-fourier-classes", "unconditional-ddpm-no-resample-conv",
        "ddpmpp-cifar10"])
def test_unet_parameter_count_matches_a_closed_form(config):
  assert unet.count_params(unet.abstract_params(config)) == closed_form_unet_params(config)


def test_ddpm_cifar10_has_the_published_35_7m_parameters():
  # Ho et al. 2020, appendix B: "Our CIFAR10 model has 35.7 million parameters".
  config = unet_config("ddpm-cifar10")
  count = unet.count_params(unet.abstract_params(config))
  assert count == closed_form_unet_params(config)
  assert round(count / 1e6, 1) == 35.7


def test_config_tuples_survive_lists_and_a_json_round_trip():
  config = unet_config("cpu")
  from_lists = unet.UNetConfig(**{**unet.config_for("cpu"), "channel_mult": [1, 2],
                                  "attention_resolutions": [4]})
  assert from_lists == config and hash(from_lists) == hash(config)
  assert unet.UNetConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
  mlp = score_mlp.ScoreMLPConfig()
  assert score_mlp.ScoreMLPConfig(**json.loads(json.dumps(dataclasses.asdict(mlp)))) == mlp


@pytest.mark.parametrize("overrides, message", [
    (dict(image_size=10, channel_mult=(1, 2, 2), attention_resolutions=()),
     "config.model.image_size=10 must be divisible by 2^2"),
    (dict(attention_resolutions=(2,)), "config.model.attention_resolutions=(2,): [2]"),
    (dict(resblock="resnet"), "config.model.resblock='resnet': expected one of ddpm, biggan"),
    (dict(time_embedding="learned"), "config.model.time_embedding='learned'"),
    (dict(time_input="sigma"), "config.model.time_input='sigma'"),
    (dict(channel_mult=()), "config.model.channel_mult=(): expected one positive"),
    (dict(channel_mult=2), "config.model.channel_mult=2: expected a tuple of integers"),
    (dict(base_width=48), "config.model.base_width=48 with channel_mult=(1, 2): a GroupNorm"),
    (dict(num_res_blocks=0), "config.model.num_res_blocks=0 must be >= 1"),
    (dict(dropout=1.0), "config.model.dropout=1.0 must be in [0, 1)"),
    (dict(dtype="float64"), "dtype 'float64' (config.model.dtype"),
    (dict(time_embedding="fourier"), "config.model.time_scale=999.0 with time_embedding="),
])
def test_bad_unet_config_is_a_one_line_user_error(overrides, message):
  with pytest.raises(UserError) as error:
    unet_config("cpu", **overrides)
  assert message in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(UserError, match="unknown U-Net variant 'huge'"):
    unet.config_for("huge")


def test_bad_unet_inputs_are_user_errors_before_compiling():
  config = unet.UNetConfig(**RGB16)
  model = unet.UNet(config)
  x, t, std = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,)), jnp.ones((2,))
  init = lambda *args, **kw: jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw))
  with pytest.raises(UserError, match=r"images of shape \(2, 8, 8, 3\).*\(B, 16, 16, 3\)"):
    init(jnp.zeros((2, 8, 8, 3)), t, std=std)
  with pytest.raises(UserError, match=r"t must have shape \[B\]=\[2\]"):
    init(x, jnp.zeros((2, 1)), std=std)
  with pytest.raises(UserError, match="scale_by_sigma=True needs the marginal std"):
    init(x, t)
  with pytest.raises(UserError, match=r"labels must be integers of shape \[B\]=\[2\]"):
    init(x, t, std=std, labels=jnp.zeros((2,)))
  with pytest.raises(UserError, match="config.model.num_classes=0"):
    jax.eval_shape(lambda: unet.UNet(unet_config()).init(jax.random.key(0), jnp.zeros(
        (2, 8, 8, 1)), t, labels=jnp.zeros((2,), jnp.int32)))
  # labels=None selects the "no label" row: one more row than classes.
  params = unet.abstract_params(config)
  assert params["class_embed"]["embedding"].shape == (4, 64)


# ---- the MLP -------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["concat", "add"])
def mlp(request):
  config = score_mlp.ScoreMLPConfig(conditioning=request.param, hidden_width=32,
                                    num_layers=2, scale_by_sigma=True)
  return Compiled(config, score_mlp.ScoreMLP, score_mlp.abstract_params)


def test_mlp_shapes_time_dependence_and_std_division(mlp):
  x = jnp.broadcast_to(jnp.array([[0.3, -1.2]]), (4, 2))
  t, std = jnp.array([0.05, 0.3, 0.6, 0.95]), jnp.ones(4)
  out = mlp.apply(mlp.params, x, t, std=std)
  chex.assert_shape(out, (4, 2))
  chex.assert_type(out, jnp.float32)
  assert float(jnp.min(jnp.abs(out[1:] - out[:-1]).sum(axis=1))) > 1e-4
  np.testing.assert_allclose(mlp.apply(mlp.params, x, t, std=2 * std), out / 2, rtol=1e-6)


def closed_form_mlp_params(cfg: score_mlp.ScoreMLPConfig) -> int:
  fourier = cfg.embedding_width // 2 if cfg.time_embedding == "fourier" else 0
  width, embedding = cfg.hidden_width, cfg.embedding_width
  first_in = cfg.data_dim + (embedding if cfg.conditioning == "concat" else 0)
  hidden = (first_in + 1) * width + (cfg.num_layers - 1) * (width + 1) * width
  added = cfg.num_layers * (embedding + 1) * width if cfg.conditioning == "add" else 0
  return fourier + hidden + added + (width + 1) * cfg.data_dim


@pytest.mark.parametrize("overrides", [dict(), dict(conditioning="add", num_layers=4),
                                       dict(time_embedding="positional", data_dim=3)])
def test_mlp_parameter_count_matches_a_closed_form(overrides):
  config = score_mlp.ScoreMLPConfig(**overrides)
  count = score_mlp.count_params(score_mlp.abstract_params(config))
  assert count == closed_form_mlp_params(config)


@pytest.mark.parametrize("overrides, message", [
    (dict(embedding_width=7), "config.model.embedding_width=7: expected an even width >= 4"),
    (dict(conditioning="film"), "config.model.conditioning='film': expected one of concat"),
    (dict(num_layers=0), "config.model.num_layers=0 must be >= 1"),
    (dict(fourier_scale=0.0), "config.model.fourier_scale=0.0 must be > 0"),
])
def test_bad_mlp_config_is_a_one_line_user_error(overrides, message):
  with pytest.raises(UserError) as error:
    score_mlp.ScoreMLPConfig(**overrides)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_mlp_inputs_are_user_errors():
  model = score_mlp.ScoreMLP(score_mlp.ScoreMLPConfig(time_input="log_std"))
  init = lambda *args, **kw: jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw))
  with pytest.raises(UserError, match=r"x of shape \[4, 3\]: expected \[B, 2\]"):
    init(jnp.zeros((4, 3)), jnp.zeros(4), std=jnp.ones(4))
  with pytest.raises(UserError, match="time_input='log_std' needs the marginal std"):
    init(jnp.zeros((4, 2)), jnp.zeros(4))


def test_mlp_learns_the_score_of_a_2d_gaussian():
  """400 Adam steps of DSM on the VP SDE take the loss from ~1 to near its floor (the loss of
  the true score, gaussian.denoising_loss_floor, averaged over t ~ U(0, 1))."""
  sde, mean = VPSDE(), jnp.array([1.0, -0.5])
  cov = jnp.array([[0.3, 0.1], [0.1, 0.1]])
  model = score_mlp.ScoreMLP(score_mlp.ScoreMLPConfig(hidden_width=64, num_layers=2))
  optimizer = optax.adam(3e-3)

  def loss_fn(params, rng, batch_size=256):
    data_rng, loss_rng = jax.random.split(rng)
    x0 = gaussian.sample_gaussian(data_rng, mean, cov, batch_size)
    score_fn = lambda x, t: model.apply({"params": params}, x, t)
    return losses.dsm_loss(sde, score_fn, x0, loss_rng)

  def step(carry, rng):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  @jax.jit
  def train(params):
    # The same held-out draws of x0, t and z before and after training.
    evaluate = lambda p: loss_fn(p, jax.random.key(123), batch_size=8192)
    before = evaluate(params)
    (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)),
                                  jax.random.split(jax.random.key(1), 400))
    return before, evaluate(params)

  init = jax.jit(model.init)
  params = nn.meta.unbox(init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros(1))["params"])
  before, after = map(float, train(params))
  floor = float(jnp.mean(gaussian.denoising_loss_floor(sde, cov, jnp.linspace(1e-5, 1, 2001))))
  assert before > 0.8 and after < 0.25 * before, (before, after)
  assert after < floor + 0.05, (after, floor)

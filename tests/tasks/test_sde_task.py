"""The "sde" task: three training steps through the generic trainer on a toy density (MLP,
with the noise-conditional classifier) with its evaluators and PNGs; on 8x8 digits (a tiny
untrained U-Net, to keep compiles few) the sample / inpainting / trajectory PNGs and a
finite bits/dim; the score parameterisation, fixed held-out draws, tfds mnist through
tfds.testing.mock_data, and one-line config errors.

Module-scoped: the toy run and the digits trainer (never trained: its step is not compiled).
"""

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_one_line_error, load_test_config
from genvis.diffusion import losses
from genvis.errors import UserError
from genvis.sampling import image_grid
from genvis.tasks import sde as sde_task
from genvis.train.trainer import Trainer


COMMON = {
    "train.log_every": 1,
    "train.progress_bar": False,
    "optim.warmup_steps": 1,
    "checkpoint.every": 1000,
    "sample.num_steps": 4,
    "sample.num_snapshots": 3,
    "sample.corrector": "none",  # one network call per step: a smaller program to compile
}
TOY = {
    **COMMON,
    "model.hidden_width": 16,
    "model.num_layers": 1,
    "data.batch_size": 64,
    "data.test_size": 72,  # two held-out batches, the second mostly padding
    "train.steps": 3,
    "eval.bpd_examples": 16,
    "sde.classifier": True,
    "sde.classifier_width": 16,
    "sample.num_samples": 32,
    "sample.per_class": 4,
}
TINY_UNET = {  # one level: the smallest U-Net program (its middle block still attends)
    "model.base_width": 8,
    "model.channel_mult": (1,),
    "model.num_res_blocks": 1,
    "model.attention_resolutions": (),
}
DIGITS = {
    **COMMON,
    **TINY_UNET,
    "data.batch_size": 16,
    "eval.bpd_examples": 8,
    "eval.likelihood_tol": 1e-2,
    "sample.num_samples": 8,
    "sample.inpaint_examples": 2,
    "sample.inpaint_per_example": 2,
}


def sde_config(variant="data=gmm", base=None, **overrides):
  return load_test_config(f"sde.py:{variant}", TOY if base is None else base, **overrides)


@pytest.fixture(scope="module", name="toy_run")
def fixture_toy_run(tmp_path_factory):
  """(workdir, summary, trainer): 3 steps on the 8-Gaussian mixture, with the classifier."""
  workdir = str(tmp_path_factory.mktemp("sde_toy"))
  trainer = Trainer(sde_config(), workdir)
  return workdir, trainer.train(), trainer


@pytest.fixture(scope="module", name="digits")
def fixture_digits():
  """(task, params): a tiny VE U-Net on the digits, untrained (no step is compiled)."""
  task = sde_task.ScoreSDETask(sde_config("data=digits,sde=ve", DIGITS), None)
  return task, jax.jit(lambda rng: nn.meta.unbox(task.init_variables(rng)["params"]))(
      jax.random.key(0))


def test_toy_run_reports_losses_likelihood_and_pictures(toy_run):
  workdir, summary, trainer = toy_run
  for key in ("val_loss", "val_dsm_loss", "val_classifier_loss", "val_classifier_accuracy",
              "val_likelihood/bits_per_dim", "val_likelihood/nll_nats",
              "val_likelihood/true_nll_nats"):
    assert math.isfinite(summary[key]), key
  assert summary["val_loss"] == pytest.approx(
      summary["val_dsm_loss"] + summary["val_classifier_loss"], rel=1e-5)
  # Points in the plane: bits/dim is the NLL in bits over 2 dims, no bin offset.
  assert summary["val_likelihood/bits_per_dim"] == pytest.approx(
      summary["val_likelihood/nll_nats"] / (2 * math.log(2)), rel=1e-5)
  # Three steps from initialisation: far worse than the mixture's true NLL (~0.3 nats).
  assert summary["val_likelihood/nll_nats"] > summary["val_likelihood/true_nll_nats"] + 0.5
  for name in ("samples", "trajectory", "class_conditional"):
    assert os.path.getsize(os.path.join(workdir, f"{name}_step3.png")) > 1000, name
  assert trainer.task.flops_per_step(0) > 0


def test_a_resume_compares_only_the_schedule_keys_the_sde_reads(toy_run, tmp_path):
  workdir, _, trainer = toy_run
  facts = trainer.task.metadata()["sde"]
  assert dict(facts) == {"kind": "vpsde", "beta_min": 0.1, "beta_max": 20.0}
  assert int(Trainer(sde_config(sde__sigma_max=99.0), workdir).restore_latest().step) == 3
  with pytest.raises(UserError) as excinfo:  # a key VP reads
    Trainer(sde_config(sde__beta_max=10.0), workdir).restore_latest()
  assert_one_line_error(excinfo, "sde=", "'beta_max': 20.0", "'beta_max': 10.0")
  # A checkpoint written before recorded every schedule key, whatever the SDE: it resumes,
  # with the ignored ones changed since too.
  older = {**trainer.task.metadata(), "sde": {"kind": "vpsde", "sigma_min": 0.01,
                                              "sigma_max": 6.0, "beta_min": 0.1,
                                              "beta_max": 20.0}}
  writer = Trainer(sde_config(), str(tmp_path))
  writer.checkpointer.save(3, trainer.restore_latest(), older)
  writer.checkpointer.wait()
  writer.checkpointer.close()
  for overrides in ({}, {"sde__sigma_max": 99.0}):
    resumed = Trainer(sde_config(**overrides), str(tmp_path)).restore_latest()
    assert int(resumed.step) == 3


def test_guidance_without_a_classifier_is_refused_not_ignored():
  with pytest.raises(UserError) as excinfo:
    sde_task.ScoreSDETask(sde_config(sde__classifier=False, sample__guidance_scale=4.0), None)
  assert_one_line_error(excinfo, "config.sample.guidance_scale=4.0",
                        "config.sde.classifier=False")
  config = sde_config(sample__guidance_scale=4.0)  # with the classifier: what it is for
  assert sde_task.ScoreSDETask(config, None).use_classifier


def test_num_scales_is_gone_and_an_old_config_json_holding_it_still_builds():
  """sde.num_scales changed nothing the task computes (it has no discrete-time part)."""
  config = sde_config()
  assert "num_scales" not in config.sde
  with config.unlocked():
    config.sde.num_scales = 1000  # as workdir/config.json of a run from before records it
  assert sde_task.ScoreSDETask(config, None).sde.num_scales == 1000


def test_digits_sample_inpainting_and_trajectory_pngs(digits, tmp_path):
  task, params = digits
  pictures = task.sample(params, jax.random.key(0))["images"]
  assert sorted(pictures) == ["inpainting", "samples", "trajectory"]  # grey: no colourising
  cell = 8 * 8 + 1  # 8x8 digits enlarged 8 times, a 1-pixel border
  assert pictures["samples"].shape == (cell + 1, 8 * cell + 1, 1)
  assert pictures["inpainting"].shape == (2 * cell + 1, 4 * cell + 1, 1)  # orig|half|2
  assert pictures["trajectory"].shape == (4 * cell + 1, 3 * cell + 1, 1)  # 4 rows, 3 shots
  for name, picture in pictures.items():  # what the trainer does with them
    image_grid.save_png(str(tmp_path / f"{name}.png"), picture)
    assert os.path.getsize(tmp_path / f"{name}.png") > 100


def test_inpainting_keeps_the_known_half(digits):
  task, params = digits
  originals = task.test_x[:2]
  completions = task.inpaint(params, originals, jax.random.key(3), per_image=2)
  assert completions.shape == (2, 2, 8, 8, 1)
  np.testing.assert_allclose(completions[:, :, :4], np.repeat(originals[:, None, :4], 2, 1),
                             atol=1e-5)
  assert not np.allclose(completions[:, :, 4:], originals[:, None, 4:], atol=1e-2)


def test_digits_bits_per_dim_is_finite_and_includes_the_bin_offset(digits):
  task, params = digits
  assert task.num_levels == 17 and task.model_config.image_size == 8
  metrics = task.evaluate_likelihood(params)
  # Dequantised 17-level digits: the bin offset log2(16 / 2) = 3 bits is included, and an
  # untrained network is far from the 2.9 of a Gaussian fitted to the data.
  assert math.isfinite(metrics["bits_per_dim"]) and metrics["bits_per_dim"] > 3.0
  assert metrics["solver_steps"] >= 1


@pytest.mark.parametrize("sde, scaled", [("vp", False), ("ve", True)])
def test_score_is_the_network_output_over_sigma(toy_run, sde, scaled):
  if sde == "vp":  # the toy run's
    task, params = toy_run[2].task, toy_run[2].restore_latest().params
  else:
    task = sde_task.ScoreSDETask(sde_config(f"data=gmm,sde={sde}"), None)
    params = nn.meta.unbox(task.init_variables(jax.random.key(0))["params"])
  assert task.model_config.scale_by_sigma == scaled
  x = jnp.asarray(task.test_x[:3])
  t = jnp.array([0.1, 0.5, 0.9])
  _, std = task.sde.marginal_prob(x, t)
  out = task.model.apply({"params": params["score"]}, x, t, std=std)
  # VE (NCSN++): the network divides by sigma itself, its output is the score; VP (DDPM++):
  # the network predicts the noise z and the score is -out / std.
  np.testing.assert_allclose(task.score(params, x, t), out if scaled else -out / std[:, None],
                             rtol=1e-6)


def test_eval_batches_fix_their_draws_and_cover_the_test_set(toy_run):
  task = toy_run[2].task
  batches, again = list(task.eval_batches()), list(task.eval_batches())
  assert len(batches) == 2 and sum(b["weights"].sum() for b in batches) == 72
  np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches])[:72], task.test_x)
  for first, second in zip(batches, again):
    np.testing.assert_array_equal(first["t"], second["t"])
    np.testing.assert_array_equal(first["noise"], second["noise"])
  assert np.all((batches[0]["t"] >= task.eps) & (batches[0]["t"] <= 1.0))
  assert set(task.train_batch(0)) == set(task.batch_spec()) == {"x", "weights", "labels"}


def test_loss_is_dsm_over_the_real_rows_only(toy_run):
  task = toy_run[2].task
  params = toy_run[2].restore_latest().params
  batch = list(task.eval_batches())[1]  # 8 real points, 56 padding rows
  real = batch["weights"] > 0
  _, metrics = jax.jit(lambda p, b: task.loss_fn(p, b, jax.random.key(0), train=False))(
      params, batch)
  per_example = losses.dsm_per_example(
      task.sde, lambda x, t: task.score(params, x, t), jnp.asarray(batch["x"][real]),
      jnp.asarray(batch["t"][real]), jnp.asarray(batch["noise"][real]))
  assert float(metrics["dsm_loss"]) == pytest.approx(float(per_example.mean()), rel=1e-5)
  assert float(metrics["weight"]) == 8.0


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_images_through_mock_data(tmp_path, name, shape):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  data_dir = tmp_path / "tfds"
  builder = tfds.builder(name, data_dir=str(data_dir))
  builder.info.set_splits(tfds.core.SplitDict(
      [tfds.core.SplitInfo(name=s, shard_lengths=[1], num_bytes=0) for s in ("train", "test")]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)
  config = sde_config(f"data={name}", DIGITS, data__tfds_data_dir=str(data_dir))
  with tfds.testing.mock_data(num_examples=16, data_dir=str(data_dir),
                              policy=tfds.testing.MockPolicy.USE_FILES):
    task = sde_task.ScoreSDETask(config, None)
  assert task.data_shape == shape and task.num_levels == 256
  assert task.model_config.image_size == shape[0] and config.model.channels == shape[2]
  batch = task.train_batch(0)
  assert batch["x"].shape == (16, *shape) and batch["x"].dtype == np.float32
  params = jax.eval_shape(lambda: nn.meta.unbox(task.init_variables(jax.random.key(0))["params"]))
  loss, metrics = jax.eval_shape(  # traced, not compiled: shapes all the way through
      lambda p, b: task.loss_fn(p, b, jax.random.key(1), train=True), params, batch)
  assert loss.shape == () and set(metrics) == {"loss", "dsm_loss"}


def test_digits_classifier_head_and_guided_sampler_trace():
  task = sde_task.ScoreSDETask(sde_config("data=digits", DIGITS, sde__classifier=True,
                                          sde__classifier_width=8), None)
  assert task.classifier_config.kind == "conv" and task.classifier_config.num_classes == 10
  batch = task.train_batch(0)
  assert batch["labels"].shape == (16,)
  params = jax.eval_shape(lambda: nn.meta.unbox(task.init_variables(jax.random.key(0))["params"]))
  assert set(params) == {"score", "classifier"}
  _, metrics = jax.eval_shape(  # traced, not compiled
      lambda p, b: task.loss_fn(p, b, jax.random.key(1), train=True), params, batch)
  assert {"classifier_loss", "classifier_accuracy", "dsm_loss"} <= set(metrics)
  guided = jax.eval_shape(lambda p: task.generate(p, jax.random.key(2), 10,
                                                  labels=jnp.arange(10)).x, params)
  assert guided.shape == (10, 8, 8, 1)


@pytest.mark.parametrize("overrides, fragments", [
    ({"sde.kind": "ddpm"}, ("config.sde.kind='ddpm'", "vesde")),
    ({"sde.weighting": "sigma"}, ("config.sde.weighting='sigma'", "sigma2")),
    ({"sde.eps": 0.0}, ("config.sde.eps=0.0",)),
    ({"model.data_dim": 3}, ("config.model.data_dim=3", "data_dim=2")),
    ({"data.density": "spiral"}, ("config.data.density='spiral'", "checkerboard")),
    ({"data.test_size": 0}, ("config.data.test_size=0",)),
    ({"eval.bpd_batch": 0}, ("config.eval.bpd_batch=0", "bpd_examples=0")),
])
def test_toy_config_mistakes_are_one_line_errors(overrides, fragments):
  with pytest.raises(UserError) as excinfo:
    sde_task.ScoreSDETask(sde_config(**{k.replace(".", "__"): v
                                        for k, v in overrides.items()}), None)
  assert_one_line_error(excinfo, *fragments)


def test_image_config_mistakes_are_one_line_errors():
  with pytest.raises(UserError) as excinfo:
    sde_task.ScoreSDETask(sde_config("data=digits", DIGITS, model__image_size=16), None)
  assert_one_line_error(excinfo, "config.model.image_size=16", "image_size=8")
  with pytest.raises(UserError) as excinfo:  # digits sit on 17 levels, not 256
    sde_task.ScoreSDETask(sde_config("data=digits", DIGITS, eval__num_levels=256), None)
  assert_one_line_error(excinfo, "config.eval.num_levels=256", "256-level grid")
  with pytest.raises(UserError) as excinfo:
    sde_task.ScoreSDETask(sde_config("data=gaussian", sde__classifier=True), None)
  assert_one_line_error(excinfo, "needs >= 2 classes")
  toy = sde_config()
  with toy.unlocked():
    toy.model.base_width = 32  # a U-Net field on 2-D data
  with pytest.raises(UserError) as excinfo:
    sde_task.ScoreSDETask(toy, None)
  assert_one_line_error(excinfo, "config.model.base_width is not a field of the 2-D score MLP")

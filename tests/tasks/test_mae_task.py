"""MAE task: image batches, evaluation over the whole test split with fixed masks, the
mean-patch baseline, a tiny batch that overfits, the reconstruction grid, probe features and
one-line config errors.

One tiny digits task (8x8 with 2x2 patches, encoder width 16 x 1 layer, decoder 8 x 1) and one
3-step trained run are shared by the module.
"""

import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import SHORT_RUN_OVERRIDES, load_test_config, short_run
from genvis.errors import UserError
from genvis.models import mae
from genvis.tasks import mae as mae_task

OVERRIDES = {
    "model.num_layers": 1,
    "model.d_model": 16,
    "model.num_heads": 2,
    "model.decoder_d_model": 8,
    "model.decoder_layers": 1,
    "model.decoder_heads": 2,
    **SHORT_RUN_OVERRIDES,
    "sample.num_samples": 2,
}


def mae_config(data="digits", **overrides):
  return load_test_config(f"mae.py:data={data}", OVERRIDES, **overrides)


def unboxed_init(task, seed=0):
  return nn.meta.unbox(task.init_variables(jax.random.key(seed))["params"])


@pytest.fixture(scope="module", name="run")
def fixture_run(tmp_path_factory):
  """(workdir, summary, trainer) of a 3-step digits run."""
  return short_run(tmp_path_factory, mae_config(), "mae")


def test_sizes_come_from_the_data(task):
  cfg = task.model_config
  assert (cfg.image_size, cfg.channels, cfg.patch_size) == (8, 1, 2)
  assert (task.num_patches, cfg.num_kept, cfg.patch_dim) == (16, 4, 4)
  assert task.metadata()["image_shape"] == [8, 8, 1]
  assert task.metadata()["model"]["decoder_d_model"] == 8


def test_batches_are_images_and_deterministic(task):
  batch = task.train_batch(0)
  assert batch["images"].shape == (16, 8, 8, 1) and batch["images"].dtype == np.float32
  np.testing.assert_array_equal(batch["weights"], np.ones(16, np.float32))
  np.testing.assert_array_equal(
      batch["images"], task.train_set.images[task.batches.train_order.train_indices(0)])
  np.testing.assert_array_equal(task.train_batch(0)["images"], batch["images"])
  assert not np.array_equal(task.train_batch(1)["images"], batch["images"])
  assert task.tokens_per_step() == 16
  assert task.flops_per_step(0) == 16 * mae_task.flops_per_image(task.model_config) > 0


def test_evaluation_covers_the_test_split_once_with_fixed_masks(task):
  batches = list(task.eval_batches())
  assert len(batches) == math.ceil(445 / 16)
  assert sum(b["weights"].sum() for b in batches) == len(task.test_set) == 445
  images = np.concatenate([b["images"][b["weights"] > 0] for b in batches])
  np.testing.assert_array_equal(images, task.test_set.images)
  again = list(task.eval_batches())
  for first, second in zip(batches, again):
    np.testing.assert_array_equal(first["noise"], second["noise"])
  assert not np.array_equal(batches[0]["noise"], batches[1]["noise"])


def test_training_reports_val_loss_and_the_baseline(run):
  workdir, summary, trainer = run
  assert {"val_loss", "val_mean_patch_mse", "val_mean_image_mse"} <= set(summary)
  assert "weight" not in summary and "val_weight" not in summary
  # Three steps from initialisation: nowhere near the mean-image baseline yet.
  assert 0.0 < summary["val_mean_image_mse"] < summary["val_mean_patch_mse"]
  assert summary["val_loss"] > summary["val_mean_image_mse"]
  assert os.path.getsize(os.path.join(workdir, "reconstructions_step3.png")) > 100
  # Fixed eval masks: evaluating the same params twice gives exactly the same figures.
  params = trainer.restore_latest().params
  first, second = trainer.evaluate(params), trainer.evaluate(params)
  assert first == second
  assert first["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-6)


def _numpy_patches(images, patch):
  """[B, H, W, C] -> [B, N, p*p*C] in (row, col) patch order, values (py, px, c)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def test_mean_patch_baseline_matches_numpy():
  config = mae_config(data__max_examples=6)
  task = mae_task.MAETask(config, None)
  train_patches = _numpy_patches(task.train_set.images.astype(np.float64), 2)
  np.testing.assert_allclose(task.mean_patch, train_patches.mean(axis=(0, 1)), atol=1e-6)
  batch = next(task.eval_batches())  # 6 test images, then padding at weight 0
  assert batch["weights"].sum() == 6
  _, metrics = task.loss_fn(unboxed_init(task), batch, jax.random.key(0), train=False)
  real = batch["weights"] > 0
  masked = np.argsort(np.argsort(batch["noise"][real], axis=1), axis=1) >= 4  # 12 of 16
  errors = ((_numpy_patches(batch["images"][real], 2) - train_patches.mean(axis=(0, 1))) ** 2)
  expected = errors.mean(axis=-1)[masked].mean()
  assert float(metrics["mean_patch_mse"]) == pytest.approx(expected, rel=1e-5)
  image_errors = (_numpy_patches(batch["images"][real], 2) - train_patches.mean(axis=0)) ** 2
  assert float(metrics["mean_image_mse"]) == pytest.approx(
      image_errors.mean(axis=-1)[masked].mean(), rel=1e-5)
  assert float(metrics["weight"]) == 6.0


def test_norm_pix_baseline_is_the_mean_normalised_patch():
  task = mae_task.MAETask(mae_config(model__norm_pix_loss=True, data__max_examples=20), None)
  patches = _numpy_patches(task.train_set.images.astype(np.float64), 2)
  normalised = ((patches - patches.mean(axis=-1, keepdims=True))
                / np.sqrt(patches.var(axis=-1, ddof=1, keepdims=True) + 1e-6))
  np.testing.assert_allclose(task.mean_patch, normalised.mean(axis=(0, 1)), atol=1e-5)
  # Every normalised patch has mean ~0 over its values, so the mean patch does too, while
  # the raw mean patch is dark (the digits' background is -1).
  assert abs(float(task.mean_patch.mean())) < 1e-3
  assert float(patches.mean()) < -0.3


def test_a_tiny_batch_overfits(task):
  batch = {"images": jnp.asarray(task.train_set.images[:4]), "weights": jnp.ones(4),
           "noise": jax.random.uniform(jax.random.key(3), (4, 16))}
  params = unboxed_init(task)
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state):
    (_, metrics), grads = jax.value_and_grad(
        lambda p: task.loss_fn(p, batch, jax.random.key(0), train=False), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state = optimizer.init(params)
  _, _, first = step(params, opt_state)
  # The 8-wide decoder memorises slowly: 300 steps (a few seconds) to get well clear.
  for _ in range(300):
    params, opt_state, metrics = step(params, opt_state)
  assert float(metrics["loss"]) < 0.25 * float(first["mean_patch_mse"])
  assert float(metrics["loss"]) < 0.5 * float(first["mean_image_mse"])
  assert float(metrics["loss"]) < 0.1 * float(first["loss"])


def test_reconstruction_grid_pastes_the_visible_patches_back(task, params):
  originals = task.test_set.images[:3]
  table = task.reconstruction_table(params, originals, jax.random.key(5))
  assert table.shape == (3, 4, 8, 8, 1)
  np.testing.assert_array_equal(table, task.reconstruction_table(params, originals,
                                                                 jax.random.key(5)))
  np.testing.assert_array_equal(table[:, 0], originals)
  # The masks come from uniform noise drawn with the key: the 4 lowest values are kept.
  noise = np.asarray(jax.random.uniform(jax.random.key(5), (3, 16)))
  hidden = np.argsort(np.argsort(noise, axis=1), axis=1) >= 4
  visible = ~hidden
  masked, pasted = _numpy_patches(table[:, 1], 2), _numpy_patches(table[:, 3], 2)
  original_patches = _numpy_patches(originals, 2)
  assert np.all(masked[hidden] == 0.0)
  np.testing.assert_array_equal(masked[visible], original_patches[visible])
  np.testing.assert_array_equal(pasted[visible], original_patches[visible])
  reconstructed = _numpy_patches(table[:, 2], 2)
  np.testing.assert_array_equal(pasted[hidden], reconstructed[hidden])
  pictures = task.sample(params, jax.random.key(1))["images"]
  cell = 8 * 8 + 1  # 8x8 cells enlarged 8 times, with a 1-pixel border
  assert pictures["reconstructions"].shape == (2 * cell + 1, 4 * cell + 1, 1)
  assert pictures["reconstructions"].dtype == np.uint8


def test_features_are_pooled_whatever_the_chunking(task, params):
  images = task.test_set.images[:5]
  features = task.features(params, images, batch_size=2)
  assert features.shape == (5, 16)
  np.testing.assert_allclose(features, task.features(params, images, batch_size=8),
                             rtol=1e-5, atol=1e-6)


def test_probe_features_pool_as_config_model_pooling_says(task, params):
  """MAETask.features averaged the patch tokens whatever model.pooling said."""
  assert task.model_config.pooling == "mean"  # configs/mae.py: what the recorded probes used
  cls_task = mae_task.MAETask(mae_config(model__pooling="cls"), None)
  images = task.test_set.images[:5]
  tokens = np.asarray(mae.mae_encoder_features(task.model, params, images, pooled=False))
  mean_features = task.features(params, images)
  cls_features = cls_task.features(params, images)  # pooling has no parameters of its own
  np.testing.assert_allclose(mean_features, tokens[:, 1:].mean(axis=1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cls_features, tokens[:, 0], rtol=1e-5, atol=1e-6)
  assert not np.allclose(cls_features, mean_features, atol=1e-3)


def test_config_mistakes_are_one_line_errors():
  with pytest.raises(UserError, match=r"config.model.image_size=16, but the data "
                                      r"has image_size=8"):
    mae_task.MAETask(mae_config(model__image_size=16), None)
  with pytest.raises(UserError, match=r"config.model.channels=3, .* channels=1"):
    mae_task.MAETask(mae_config(model__channels=3), None)
  with pytest.raises(UserError, match="image_size=8 is not divisible by config.model."
                                      "patch_size=3"):
    mae_task.MAETask(mae_config(model__patch_size=3), None)
  with pytest.raises(UserError, match="random_crop_padding=8"):
    mae_task.MAETask(mae_config(data__random_crop_padding=8), None)

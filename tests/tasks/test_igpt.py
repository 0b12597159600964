"""ImageGPT task: pixel tokens after a start token, causality over pixels, palettes saved with
the run, bits/dim over the whole test split, completions that keep the given half, probes'
features, and a tiny batch that overfits.

One tiny digits task (1 layer, width 16) and one trained run are shared by the module.
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
from genvis.data import digits
from genvis.errors import UserError
from genvis.tasks import igpt

OVERRIDES = {
    "model.num_layers": 2,
    "model.d_model": 16,
    "model.num_heads": 2,
    "model.dropout": 0.0,
    **SHORT_RUN_OVERRIDES,
    "sample.num_samples": 2,
    "sample.completions": 2,
}


def igpt_config(data="digits", **overrides):
  return load_test_config(f"igpt.py:data={data}", OVERRIDES, **overrides)


@pytest.fixture(scope="module", name="run")
def fixture_run(tmp_path_factory):
  """(workdir, summary, trainer) of a 3-step digits run."""
  return short_run(tmp_path_factory, igpt_config(), "igpt")


def test_sizes_come_from_the_data(task):
  cfg = task.model_config
  assert task.num_colors == 17 and task.num_pixels == 64
  # 17 grey levels + the start token in; the 17 levels out; one position per pixel.
  assert (cfg.vocab_size, cfg.num_outputs, cfg.max_len) == (18, 17, 64)
  assert (cfg.norm, cfg.activation, cfg.tie_embeddings) == ("rms", "quick_gelu", False)


def test_batch_is_the_raster_order_after_a_start_token(task):
  batch = task.train_batch(0)
  indices = task.train_order.train_indices(0)
  images = task.train_set.images[indices]
  # The digits' 17 levels are the palette: tokens are the grey levels g = 8 (x + 1), row by row.
  np.testing.assert_array_equal(batch["targets"], np.round((images[..., 0] + 1) * 8)
                                .reshape(len(images), 64))
  np.testing.assert_array_equal(batch["inputs"][:, 0], task.start_token)
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  np.testing.assert_array_equal(task.train_batch(0)["targets"], batch["targets"])
  assert not np.array_equal(task.train_batch(1)["targets"], batch["targets"])


def test_evaluation_covers_the_test_split_once(task):
  batches = list(task.eval_batches())
  assert len(batches) == math.ceil(445 / 16)
  assert sum(b["weights"].sum() for b in batches) == len(task.test_set) == 445
  targets = np.concatenate([b["targets"][b["weights"] > 0] for b in batches])
  np.testing.assert_array_equal(targets, task.test_tokens)


def test_logits_ignore_later_pixels(task, params):
  tokens = task.test_tokens[:2].copy()
  changed = tokens.copy()
  changed[:, 30:] = (changed[:, 30:] + 5) % task.num_colors
  apply = jax.jit(lambda t: task.model.apply({"params": params}, t))
  base, other = apply(task.shifted(tokens)), apply(task.shifted(changed))
  # Input position p holds pixel p - 1: positions <= 30 have seen pixels < 30 only.
  np.testing.assert_allclose(base[:, :31], other[:, :31], atol=1e-6)
  assert np.abs(base[:, 31:] - other[:, 31:]).max() > 1e-4


def test_training_reports_bits_per_dim_over_the_test_split(run):
  workdir, summary, _ = run
  assert summary["val_bits_per_dim"] == pytest.approx(summary["val_loss"] / math.log(2))
  assert summary["val_bits_per_pixel"] == summary["val_bits_per_dim"]  # one channel
  assert "weight" not in summary  # a held-out weight, not a training metric
  # Three steps from a uniform head (zero-initialised): still close to log2(17) = 4.09.
  assert 3.0 < summary["val_bits_per_dim"] < 4.2
  assert os.path.exists(os.path.join(workdir, igpt.PALETTE_FILE))
  for name in ("samples_step3.png", "completions_step3.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 100


def test_completions_keep_the_given_top_half(task, params):
  originals = task.test_set.images[:3]
  table = task.completion_table(params, originals, 2, jax.random.key(0))
  assert table.shape == (3, 4, 8, 8, 1)
  np.testing.assert_array_equal(table[:, 0], originals)
  quantised = task.images(task.tokens(originals))
  for column in (2, 3):
    np.testing.assert_array_equal(table[:, column, :4], quantised[:, :4])
  assert np.all(table[:, 1, 4:] == 0.0)  # the hidden half is shown grey
  # Sampled halves differ between draws (a uniform-ish model at 3 steps).
  assert not np.array_equal(table[:, 2, 4:], table[:, 3, 4:])


def test_sample_returns_picture_grids(task, params):
  pictures = task.sample(params, jax.random.key(1))["images"]
  scale = 64 // 8
  cell = 8 * scale + 1
  assert pictures["completions"].shape == (2 * cell + 1, 4 * cell + 1, 1)
  assert pictures["samples"].shape[2] == 1 and pictures["samples"].dtype == np.uint8


def test_layer_features_are_pooled_per_layer_whatever_the_chunking(task, params):
  images = task.test_set.images[:5]
  features = task.layer_features(params, images, batch_size=2)
  assert features.shape == (2, 5, 16)
  np.testing.assert_allclose(features, task.layer_features(params, images, batch_size=8),
                             rtol=1e-5, atol=1e-6)


def test_a_tiny_batch_overfits(task):
  batch = jax.tree.map(jnp.asarray, task.train_batch(0))
  batch = jax.tree.map(lambda x: x[:4], batch)
  params = nn.meta.unbox(task.init_variables(jax.random.key(0))["params"])
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: task.loss_fn(p, batch, jax.random.key(0), train=False), has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, metrics

  opt_state = optimizer.init(params)
  for _ in range(150):
    params, opt_state, metrics = step(params, opt_state)
  assert metrics["bits_per_dim"] < 0.5


def test_resume_reuses_the_palette_and_refuses_another_size(run):
  workdir, _, _ = run
  saved = np.load(os.path.join(workdir, igpt.PALETTE_FILE))
  task = igpt.ImageGPTTask(igpt_config(), workdir)
  np.testing.assert_array_equal(task.palette, saved)
  with pytest.raises(UserError, match=r"palette of shape \[17, 1\].*palette_size=16"):
    igpt.ImageGPTTask(igpt_config(data__palette_size=16), workdir)


def test_kmeans_palette_on_colour_scenes(tmp_path):
  config = igpt_config("scenes", data__resolution=8, data__scenes_train=40,
                       data__scenes_test=8, data__palette_size=8)
  task = igpt.ImageGPTTask(config, str(tmp_path))
  assert task.palette.shape == (8, 3) and task.num_pixels == 64
  assert task.model_config.vocab_size == 9
  np.testing.assert_array_equal(np.load(tmp_path / igpt.PALETTE_FILE), task.palette)
  # Decoding tokens gives palette colours, close to the scene's pixels.
  error = np.abs(task.images(task.test_tokens) - task.test_set.images).mean()
  assert error < 0.15


def test_augmented_batches_split_across_processes_as_one_process_draws_them():
  config = igpt_config(data__flip=True, data__random_crop_padding=1)
  whole = igpt.ImageGPTTask(config, None).train_batch(3)
  halves = [igpt.ImageGPTTask(config, None, process_index=i, process_count=2).train_batch(3)
            for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["targets"] for h in halves]),
                                whole["targets"])
  plain = igpt.ImageGPTTask(igpt_config(), None).train_batch(3)
  assert not np.array_equal(plain["targets"], whole["targets"])  # augmentation did something


def test_rgb_bits_per_dim_divides_by_the_channels(tmp_path):
  config = igpt_config("scenes", data__resolution=8, data__scenes_train=16,
                       data__scenes_test=8, data__palette_size=4)
  task = igpt.ImageGPTTask(config, str(tmp_path))
  params = nn.meta.unbox(task.init_variables(jax.random.key(0))["params"])
  _, metrics = task.loss_fn(params, next(task.eval_batches()), jax.random.key(0), train=False)
  # A zero-initialised head is uniform over the 4 colours: 2 bits per pixel, 2/3 per dim.
  assert float(metrics["bits_per_pixel"]) == pytest.approx(2.0, abs=1e-5)
  assert float(metrics["bits_per_dim"]) == pytest.approx(2.0 / 3, abs=1e-5)


def test_config_mistakes_are_one_line_errors():
  with pytest.raises(UserError, match="palette='grey' needs grey images"):
    igpt.ImageGPTTask(igpt_config("scenes", data__resolution=8, data__scenes_train=8,
                                  data__scenes_test=8, data__palette="grey"), None)
  with pytest.raises(UserError, match=r"config.model.max_len=32 < 64 pixels"):
    igpt.ImageGPTTask(igpt_config(model__max_len=32), None)
  with pytest.raises(UserError, match="config.data.palette='median'"):
    igpt.ImageGPTTask(igpt_config(data__palette="median"), None)
  with pytest.raises(UserError, match="vocab_size=10: a 17-colour palette needs 18"):
    igpt.ImageGPTTask(igpt_config(model__vocab_size=10), None)
  with pytest.raises(UserError, match="head predicts the 17 palette colours"):
    igpt.ImageGPTTask(igpt_config(model__tie_embeddings=True, model__zero_init_head=False),
                      None)
  with pytest.raises(UserError, match="random_crop_padding=8"):
    igpt.ImageGPTTask(igpt_config(data__random_crop_padding=8), None)
  with pytest.raises(UserError, match=r"config.data.palette_size=64: more colours than the 32 "
                                      "training pixels"):
    igpt.ImageGPTTask(igpt_config("scenes", data__resolution=8, data__scenes_train=8,
                                  data__scenes_test=8, data__palette_size=64,
                                  data__palette_fit_pixels=32), None)
  with pytest.raises(UserError, match="config.data.palette_iters=-1"):
    igpt.ImageGPTTask(igpt_config("scenes", data__resolution=8, data__scenes_train=8,
                                  data__scenes_test=8, data__palette_iters=-1), None)
  # Sample settings are checked when the task is built, not at the sample after training.
  with pytest.raises(UserError, match=r"config.sample.top_p=1.5 must be in \(0, 1\]"):
    igpt.ImageGPTTask(igpt_config(sample__top_p=1.5), None)


def test_digit_levels_round_trip_through_the_grey_palette(task):
  images, _ = digits.load_digits("test")
  np.testing.assert_array_equal(task.images(task.tokens(images)), images)

"""ViT classification task: batches with labels, accuracy over the whole test split,
fine-tuning an MAE run's encoder (init_from takes params["vit"] only and checks the encoder's
fields), layer-wise learning-rate depths, and one-line config errors.

A tiny MAE run (digits, encoder 16 wide x 2 blocks) is shared by the module, with one
classifier trained from scratch and one fine-tuned from it.
"""

import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from conftest import REPO, SHORT_RUN_OVERRIDES, assert_one_line_error, load_test_config
from genvis import config_lib
from genvis.errors import UserError
from genvis.models import vit
from genvis.tasks import classify
from genvis.train.trainer import Trainer

ENCODER = {"model.num_layers": 2, "model.d_model": 16, "model.num_heads": 2}
COMMON = {**ENCODER, **SHORT_RUN_OVERRIDES}


def vit_config(arg="data=digits", **overrides):
  return load_test_config(f"vit.py:{arg}", COMMON, **overrides)


def mae_config(**overrides):
  return load_test_config(
      "mae.py:data=digits", {**COMMON, "model.decoder_d_model": 8, "model.decoder_layers": 1,
                             "model.decoder_heads": 2, "sample.num_samples": 0}, **overrides)


def flat(params):
  return traverse_util.flatten_dict(jax.device_get(params), sep="/")


@pytest.fixture(scope="module", name="mae_run")
def fixture_mae_run(tmp_path_factory):
  """(workdir, params) of a 3-step MAE run."""
  workdir = str(tmp_path_factory.mktemp("mae"))
  trainer = Trainer(mae_config(), workdir)
  trainer.train()
  return workdir, trainer.restore_latest().params


@pytest.fixture(scope="module", name="scratch")
def fixture_scratch(tmp_path_factory):
  """(summary, trainer) of a 3-step classifier trained from scratch."""
  trainer = Trainer(vit_config(), str(tmp_path_factory.mktemp("scratch")))
  return trainer.train(), trainer


def test_cpu_encoders_of_the_mae_and_vit_configs_match():
  """configs/vit.py's size=cpu must fine-tune configs/mae.py's size=cpu."""
  for data in ("digits", "scenes"):
    mae_model = config_lib.load_config(os.path.join(REPO, f"configs/mae.py:data={data}")).model
    vit_model = config_lib.load_config(os.path.join(REPO, f"configs/vit.py:data={data}")).model
    assert {k: mae_model[k] for k in classify.ENCODER_FIELDS} == {
        k: vit_model[k] for k in classify.ENCODER_FIELDS}


def test_sizes_and_classes_come_from_the_data(scratch):
  task = scratch[1].task
  cfg = task.model_config
  assert (cfg.image_size, cfg.channels, cfg.num_classes, cfg.pooling) == (8, 1, 10, "mean")
  batch = task.train_batch(0)
  assert batch["images"].shape == (16, 8, 8, 1) and batch["labels"].dtype == np.int32
  np.testing.assert_array_equal(batch["labels"], task.train_batch(0)["labels"])


def test_evaluation_scores_every_test_image_once(scratch):
  task = scratch[1].task
  batches = list(task.eval_batches())
  weights = np.concatenate([b["weights"] for b in batches])
  assert weights.sum() == len(task.test_set) and len(weights) % 16 == 0


def test_training_reports_accuracy_and_unsmoothed_val_loss(scratch):
  summary, trainer = scratch
  assert 0.0 <= summary["val_accuracy"] <= 1.0 and np.isfinite(summary["val_loss"])
  task, params = trainer.task, trainer.restore_latest().params
  batch = next(iter(task.eval_batches()))
  logits = np.asarray(task.model.apply({"params": params}, batch["images"]), np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -log_probs[np.arange(len(logits)), batch["labels"]].mean()
  loss, metrics = task.loss_fn(params, batch, jax.random.key(0), train=False)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert float(metrics["accuracy"]) == np.mean(logits.argmax(-1) == batch["labels"])
  smoothed, _ = task.loss_fn(params, batch, jax.random.key(0), train=True)
  assert float(smoothed) != pytest.approx(float(loss))  # label smoothing only in training


def test_finetuning_takes_the_mae_encoder_and_nothing_else(mae_run, tmp_path):
  mae_workdir, mae_params = mae_run
  trainer = Trainer(vit_config("data=digits,recipe=finetune", init_from=mae_workdir,
                               train__steps=1), str(tmp_path))
  params = flat(trainer.restore_or_init().params)
  encoder = flat(mae_params["vit"])
  assert set(params) - set(encoder) == {"head/kernel", "head/bias"}
  for name, value in encoder.items():
    np.testing.assert_array_equal(params[name], value, err_msg=name)
  assert not np.any(params["head/kernel"])  # the new head starts at zero
  assert trainer.config.optim.layer_decay < 1


def test_finetuning_refuses_a_different_encoder_naming_the_field(mae_run, tmp_path):
  trainer = Trainer(vit_config(init_from=mae_run[0], model__num_layers=3), str(tmp_path))
  with pytest.raises(UserError, match=r"model\.num_layers=2 in the checkpoint, 3 now"):
    trainer.restore_or_init()


def test_a_classifier_for_other_classes_leaves_its_head_behind(scratch):
  task = scratch[1].task
  same = task.init_from_parts({"task": "classify", "model": {"num_classes": 10}})
  other = task.init_from_parts({"task": "classify", "model": {"num_classes": 4}})
  assert (same.exclude, other.exclude) == ((), ("head",))
  assert "num_classes" not in other.model_fields and "d_model" in other.model_fields


@pytest.mark.parametrize("scan_layers", [False, True])
def test_layer_depths_run_from_the_embeddings_to_the_head(scan_layers):
  config = vit.ViTConfig(**vit.config_for("B/16", image_size=8, patch_size=2, channels=1,
                                          d_model=16, num_layers=3, num_heads=2,
                                          num_classes=5, scan_layers=scan_layers))

  class FakeTask:
    model_config = config

  depth, deepest = classify.ClassificationTask.lr_layers(FakeTask())
  depths = {name: np.asarray(depth(tuple(name.split("/")))).tolist()
            for name in flat(vit.abstract_params(config))}
  assert deepest == 4
  assert depths["patch_embed/kernel"] == depths["cls_token"] == 0
  assert depths["head/kernel"] == depths["encoder/ln_f/scale"] == 4
  blocks = {d if isinstance(d, int) else tuple(d) for n, d in depths.items()
            if "/blocks/" in n}
  assert blocks == ({(1, 2, 3)} if scan_layers else {1, 2, 3})


@pytest.mark.parametrize("arg", ["data=digits,recipe=finetune",
                                 "data=digits,size=B/16,recipe=finetune"])
def test_the_finetune_recipe_without_init_from_is_refused(arg):
  """It used to train random weights with the fine-tuning recipe, silently."""
  config = vit_config(arg)
  with pytest.raises(UserError) as excinfo:
    classify.ClassificationTask(config, None)
  assert_one_line_error(excinfo, f"config.optim.layer_decay={config.optim.layer_decay}",
                        "config.init_from is empty", "recipe=scratch")


def test_config_mistakes_are_one_line_errors(tmp_path):
  with pytest.raises(ValueError, match="recipe='warm'"):
    vit_config("data=digits,recipe=warm")
  with pytest.raises(UserError, match="config.model.num_classes=3, but the data has "
                                      "num_classes=10"):
    Trainer(vit_config(model__num_classes=3), str(tmp_path))
  with pytest.raises(UserError, match="no class labels"):
    Trainer(vit_config("data=scenes", data__scenes_label="none"), str(tmp_path))

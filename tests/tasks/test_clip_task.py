"""CLIP task: batches, a short run that reports the contrastive loss, zero-shot and retrieval
metrics, the sharded (shard_map) loss equal to the global one on 8 devices, SigLIP, and
config errors.

One tiny digits run (8x8, towers of 1 block x 16) is shared by the module.
"""

import json
import os

import jax
import numpy as np
import pytest

from conftest import SHORT_RUN_OVERRIDES, assert_one_line_error, load_test_config, short_run
from genvis.data import caption_tokens, tokenizers
from genvis.errors import UserError
from genvis.nn import contrastive
from genvis.train.trainer import Trainer

OVERRIDES = {
    "model.vision_layers": 1, "model.vision_d_model": 16, "model.vision_heads": 2,
    "model.text_layers": 1, "model.text_d_model": 16, "model.text_heads": 2,
    "model.embed_dim": 8, "model.max_len": 12, "model.vocab_size": 300,
    **SHORT_RUN_OVERRIDES, "eval.num_batches": 2,
}


def clip_config(variant="data=digits", **overrides):
  return load_test_config(f"clip.py:{variant}", OVERRIDES, **overrides)


@pytest.fixture(scope="module", name="run")
def fixture_run(tmp_path_factory):
  """(workdir, summary, trainer) of a 3-step CLIP run on digits."""
  return short_run(tmp_path_factory, clip_config(), "clip")


def test_batches_hold_pairs_with_eot_terminated_tokens(run):
  task = run[2].task
  batch = task.train_batch(0)
  assert batch["images"].shape == (16, 8, 8, 1) and batch["tokens"].shape == (16, 12)
  assert np.all(np.sum(batch["tokens"] == caption_tokens.END_ID, axis=1) == 1)
  # Rows share a caption id exactly when their captions are the same (step 0 holds no
  # image twice).
  same_text = np.all(batch["tokens"][:, None] == batch["tokens"][None], axis=-1)
  same_id = batch["caption_ids"][:, None] == batch["caption_ids"][None]
  np.testing.assert_array_equal(same_id, same_text)
  assert not np.all(np.eye(16, dtype=bool) == same_text)  # digits captions do repeat


def test_a_run_reports_loss_zero_shot_and_retrieval(run):
  workdir, summary, _ = run
  assert np.isfinite(summary["val_loss"])
  assert summary["val_logit_scale"] == pytest.approx(1 / 0.07, rel=0.01)
  for key in ("val_zeroshot/ensemble/accuracy", "val_zeroshot/single/accuracy",
              "val_retrieval/image_to_text/R@1", "val_retrieval/text_to_image/R@5"):
    assert 0.0 <= summary[key] <= 1.0, key
  assert summary["val_zeroshot/ensemble/chance_uniform"] == pytest.approx(0.1)
  # R@k grows with k.
  assert (summary["val_retrieval/image_to_text/R@1"] <= summary["val_retrieval/image_to_text/R@5"]
          <= summary["val_retrieval/image_to_text/R@10"])
  assert os.path.exists(os.path.join(workdir, tokenizers.FILENAME))
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    model = json.load(f)["model"]
  assert (model["image_size"], model["channels"]) == (8, 1)


def test_sharded_loss_equals_the_global_one_on_8_devices(run, tmp_path, monkeypatch):
  """shard_map over the data axis (each device its 2 rows x all 16 columns) = the loss of
  the global arrays, on the same parameters and batch."""
  _, _, trainer = run
  params = trainer.restore_latest().params
  calls = []
  sharded_loss = contrastive._sharded_loss  # pylint: disable=protected-access
  monkeypatch.setattr(contrastive, "_sharded_loss",
                      lambda *args: calls.append(args) or sharded_loss(*args))
  values = {}
  for sharded in (False, True):
    other = Trainer(clip_config(clip__sharded_loss=sharded), str(tmp_path / str(sharded)))
    assert other.mesh.devices.size == 8
    batch = other.global_batch(other.task.train_batch(5))
    with other.sharding_context():
      values[sharded] = jax.device_get(other._eval_step(params, batch))  # pylint: disable=protected-access
    assert len(calls) == int(sharded)  # the shard_map path only when asked for
  assert values[True]["loss"] == pytest.approx(values[False]["loss"], rel=1e-5)
  assert values[True]["accuracy"] == values[False]["accuracy"]


def test_gradient_accumulation_is_refused(tmp_path):
  # Microbatches would each compare their images with fewer captions: another objective.
  with pytest.raises(UserError) as excinfo:
    Trainer(clip_config(train__grad_accum_steps=2), str(tmp_path)).compile_train_step()
  assert_one_line_error(excinfo, "config.train.grad_accum_steps=2: the clip task's loss does "
                                 "not split into microbatches", "every caption of the whole batch")


def test_siglip_learns_a_bias(tmp_path):
  trainer = Trainer(clip_config("data=digits,loss=siglip", train__steps=1, eval__num_batches=0),
                    str(tmp_path))
  summary = trainer.train()
  assert summary["logit_bias"] == pytest.approx(-10.0, abs=0.1)
  assert summary["logit_scale"] == pytest.approx(10.0, rel=0.05)


def test_config_mistakes_are_one_line_errors(tmp_path):
  with pytest.raises(UserError, match="config.model.eot_token_id=5"):
    Trainer(clip_config(model__eot_token_id=5), str(tmp_path))
  with pytest.raises(ValueError, match="loss='hinge'"):
    clip_config("data=digits,loss=hinge")

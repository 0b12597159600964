"""GPT-1 fine-tuning: the head reads the last real token, L3 = L2 + λ·L1, init_from, eval.

One tiny LM is pre-trained per module (2 steps) and fine-tuned from; shapes are tiny_config's.
"""

import json
import logging
import os

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_OVERRIDES, assert_one_line_error, load_test_config, tiny_config
from genvis import main
from genvis.data import tokenizers
from genvis.errors import UserError
from genvis.models import gpt
from genvis.models.gpt_classifier import GPTClassifier
from genvis.tasks.sft import SupervisedFineTuningTask
from genvis.train.checkpoint import ParamsSource
from genvis.train.trainer import Trainer

SFT_SPEC = "gpt_sft.py:size=tiny"
SFT_OVERRIDES = {**TINY_OVERRIDES, "train.steps": 3, "eval.num_batches": -1,
                 "sample.num_samples": 0}
HEAD = {"cls_head/kernel", "cls_head/bias"}


def sft_config(**overrides):
  """configs/gpt_sft.py with tiny_config's model; keyword overrides use '__' for '.'."""
  return load_test_config(SFT_SPEC, SFT_OVERRIDES, **overrides)


def flat(params) -> dict:
  return {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(jax.device_get(params), sep="/").items()}


@pytest.fixture(scope="module", name="pretrained")
def fixture_pretrained(tmp_path_factory):
  """(workdir, flat params) of a 2-step tiny LM run."""
  workdir = str(tmp_path_factory.mktemp("lm"))
  config = tiny_config(train__steps=2, eval__num_batches=0, sample__num_samples=0)
  Trainer(config, workdir).train()
  return workdir, flat(Trainer(tiny_config(), workdir).restore_latest().params)


@pytest.fixture(scope="module", name="finetuned")
def fixture_finetuned(pretrained, tmp_path_factory):
  """(workdir, summary, log text) of a 3-step SFT run from `pretrained`, through genvis.main's
  run() in this process (a subprocess would compile everything again)."""
  workdir = str(tmp_path_factory.mktemp("sft"))
  records = []
  handler = logging.Handler()
  handler.emit = lambda record: records.append(record.getMessage())
  logger = logging.getLogger("genvis")
  level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  try:
    summary = main.run(sft_config(init_from=pretrained[0]), workdir, "train")
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  return workdir, summary, "\n".join(records)


@pytest.fixture(scope="module", name="initialised")
def fixture_initialised(pretrained, tmp_path_factory):
  """(trainer, state) of an SFT run initialised from `pretrained`, batch 16 (so the 402
  held-out examples end in a partial batch)."""
  workdir = str(tmp_path_factory.mktemp("init"))
  trainer = Trainer(sft_config(init_from=pretrained[0], data__batch_size=16), workdir)
  return trainer, trainer.restore_or_init()


# --------------------------------------------------------------------------------- model
def test_head_reads_the_last_real_token():
  config = gpt.GPTConfig(**gpt.config_for("tiny", vocab_size=23, num_layers=2, d_model=32,
                                          num_heads=4, max_len=12))
  model = GPTClassifier(config, num_classes=3)
  tokens = np.random.default_rng(0).integers(1, 23, size=(4, 12)).astype(np.int32)
  lengths = np.array([5, 12, 1, 7], np.int32)
  params = jax.jit(model.init)(jax.random.key(0), tokens, lengths)["params"]
  apply = jax.jit(lambda t, n: model.apply({"params": params}, t, n)[1])
  base = apply(tokens, lengths)
  after = tokens.copy()
  for row, n in enumerate(lengths):
    after[row, n:] = (after[row, n:] + 7) % 23  # padding / tokens past the length
  np.testing.assert_allclose(apply(after, lengths), base, atol=1e-6)
  last = tokens.copy()
  last[np.arange(4), lengths - 1] = (last[np.arange(4), lengths - 1] + 7) % 23
  assert np.all(np.abs(apply(last, lengths) - base).max(axis=-1) > 1e-4)  # the last one counts


# ---------------------------------------------------------------------------------- loss
_LOSS_FNS = {}


def _metrics(task, params, batch, weight):
  """Held-out metrics of one batch with λ = weight (one compiled function per λ)."""
  if weight not in _LOSS_FNS:
    task.lm_loss_weight = weight  # read when the function is traced
    _LOSS_FNS[weight] = jax.jit(
        lambda p, b: task.loss_fn(p, b, jax.random.key(0), train=False)[1])
  return jax.device_get(_LOSS_FNS[weight](params, batch))


def _padded_batch(task):
  batch = dict(task.train_batch(0))
  batch["lengths"] = np.array([3, 9, 1, 16, 5, 16, 2, 11] * 2, np.int32)
  return batch


def test_loss_is_cls_loss_plus_lambda_times_lm_loss(initialised):
  trainer, state = initialised
  batch = _padded_batch(trainer.task)
  off = _metrics(trainer.task, state.params, batch, 0.0)
  assert off["loss"] == off["cls_loss"]
  on = _metrics(trainer.task, state.params, batch, 0.5)
  np.testing.assert_allclose(on["loss"], on["cls_loss"] + 0.5 * on["lm_loss"], rtol=1e-6)
  assert on["lm_loss"] > 1.0 and on["loss"] > off["loss"] + 0.5  # a barely trained LM
  assert set(on) == {"loss", "cls_loss", "lm_loss", "accuracy", "weight", "weight/lm_loss"}


def test_heldout_loss_is_heldout_cls_loss_plus_lambda_times_heldout_lm_loss(tmp_path):
  """L2 averages over texts and L1 over tokens: held-out batches with different tokens per
  text (the padded last one too) must still give val_loss = val_cls_loss + λ·val_lm_loss."""
  trainer = Trainer(sft_config(data__batch_size=16, model__max_len=128,
                               sft__lm_loss_weight=0.5), str(tmp_path))
  batches = list(trainer.task.eval_batches())
  tokens_per_text = [(np.maximum(b["lengths"] - 1, 0) * b["weights"]).sum() / b["weights"].sum()
                     for b in batches]
  assert batches[-1]["weights"].sum() < 16 and np.ptp(tokens_per_text) > 5  # can fail
  # Scaled weights: sharper predictions, whose per-token losses (and so per-batch means)
  # differ more. Averaging the batches' L2 + λ·L1 by texts alone misses by ~5e-5 here.
  params = jax.tree.map(lambda x: 4.0 * x, trainer.restore_or_init().params)
  metrics = trainer.evaluate(params)
  np.testing.assert_allclose(metrics["val_loss"],
                             metrics["val_cls_loss"] + 0.5 * metrics["val_lm_loss"], rtol=1e-6)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
  # Texts of different lengths: microbatch j of 4 holds rows j and j + 4, unequal token shares.
  lengths = np.array([5, 32, 9, 32, 32, 17, 32, 32])
  metrics = {}
  for accum in (1, 4):
    trainer = Trainer(sft_config(train__grad_accum_steps=accum, data__batch_size=8,
                                 model__max_len=32, model__dropout=0.0,
                                 model__attention_dropout=0.0), str(tmp_path / f"{accum}"))
    batch = trainer.task.train_batch(0)
    batch = trainer.global_batch({**batch, "lengths": np.minimum(batch["lengths"], lengths)})
    state = trainer.restore_or_init()
    steps = {"totals": trainer.compile_train_step()}
    if accum > 1:  # the check that this test can fail: plain means over the microbatches
      trainer.task.batch_totals = lambda batch: {}
      steps["plain"] = trainer.compile_train_step()
    for name, step in steps.items():
      _, metrics[accum, name] = step(jax.tree.map(jnp.copy, state), batch)  # step donates it
  # The gradient's norm and the losses of the whole batch, from 1 or from 4 microbatches.
  for name in ("grad_norm", "loss", "lm_loss", "cls_loss"):
    one, exact, plain = (float(metrics[key][name])
                         for key in ((1, "totals"), (4, "totals"), (4, "plain")))
    assert exact == pytest.approx(one, rel=1e-6), name  # it came out bit for bit
    if name != "cls_loss":  # the classification loss splits evenly by texts
      assert abs(plain - one) > 1e-4 * abs(one), (name, one, plain)


def test_lm_loss_and_metrics_ignore_padding_tokens_and_rows(initialised):
  trainer, state = initialised
  task, params = trainer.task, state.params
  batch = _padded_batch(task)
  base = _metrics(task, params, batch, 0.5)
  changed = {k: v.copy() for k, v in batch.items()}
  for row, n in enumerate(batch["lengths"]):
    changed["tokens"][row, n:] = (changed["tokens"][row, n:] + 5) % task.tokenizer.vocab_size
  for k in ("lm_loss", "cls_loss", "accuracy"):
    np.testing.assert_allclose(_metrics(task, params, changed, 0.5)[k], base[k], rtol=1e-6)
  # A weight-0 row (eval padding) counts for nothing, whatever it holds.
  padded = {k: v.copy() for k, v in batch.items()}
  padded["weights"][-1] = 0.0
  other = {k: v.copy() for k, v in padded.items()}
  other["labels"][-1] = (other["labels"][-1] + 1) % 5
  other["tokens"][-1] = (other["tokens"][-1] + 1) % task.tokenizer.vocab_size
  a, b = _metrics(task, params, padded, 0.5), _metrics(task, params, other, 0.5)
  assert a["weight"] == 15.0
  for k in ("lm_loss", "cls_loss", "accuracy"):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
  # ...while a real row's tokens do count.
  real = {k: v.copy() for k, v in batch.items()}
  real["tokens"][0, :3] = (real["tokens"][0, :3] + 1) % task.tokenizer.vocab_size
  assert _metrics(task, params, real, 0.5)["lm_loss"] != base["lm_loss"]


# ------------------------------------------------------------------------------ init_from
def test_init_from_copies_the_backbone_exactly_and_only_the_head_is_new(pretrained, initialised):
  lm_workdir, lm_params = pretrained
  trainer, state = initialised
  params = flat(state.params)
  assert set(params) - set(lm_params) == HEAD
  for name, value in lm_params.items():
    np.testing.assert_array_equal(params[name], value, err_msg=name)
  with open(os.path.join(lm_workdir, "tokenizer.json"), encoding="utf-8") as f:
    lm_tokenizer = f.read()
  with open(os.path.join(trainer.workdir, "tokenizer.json"), encoding="utf-8") as f:
    assert f.read() == lm_tokenizer  # the pre-training run's tokenizer, copied


def test_init_from_accepts_a_workdir_its_checkpoints_or_one_checkpoint(pretrained):
  lm_workdir = pretrained[0]
  checkpoints = os.path.join(lm_workdir, "checkpoints")
  for path in (lm_workdir, checkpoints, os.path.join(checkpoints, "2")):
    source = ParamsSource(path, "config.init_from")
    source.close()
    assert (source.directory, source.step, source.item) == (checkpoints, 2, "params")


def test_init_from_a_different_model_is_one_line_naming_the_field(pretrained, tmp_path):
  trainer = Trainer(sft_config(init_from=pretrained[0], model__num_layers=3), str(tmp_path))
  with pytest.raises(UserError) as excinfo:
    trainer.restore_or_init()
  message = str(excinfo.value)
  assert "\n" not in message
  assert "model.num_layers=2 in the checkpoint, 3 now" in message, message


def test_init_from_with_another_tokenizer_of_the_same_size_is_refused(pretrained, tmp_path):
  with open(os.path.join(pretrained[0], tokenizers.FILENAME), encoding="utf-8") as f:
    chars = json.load(f)["chars"]
  # This workdir already holds a tokenizer (an earlier attempt's): same size, other ids.
  tokenizers.CharTokenizer(chars[::-1]).save(str(tmp_path / tokenizers.FILENAME))
  trainer = Trainer(sft_config(init_from=pretrained[0]), str(tmp_path))
  with pytest.raises(UserError) as excinfo:
    trainer.restore_or_init()
  assert_one_line_error(excinfo, "config.init_from", "tokenizer_sha256=")


def test_init_from_shape_mismatch_names_the_parameter_and_shapes(pretrained):
  source = ParamsSource(pretrained[0], "config.init_from")
  abstract = dict(source.param_shapes)  # a shallow copy: only top-level keys change
  abstract["wpe"] = jax.ShapeDtypeStruct((32, 32), jnp.float32)
  with pytest.raises(UserError) as excinfo:
    source.subtree_target(abstract)
  assert "parameter wpe is float32[16, 32]" in str(excinfo.value)
  assert "float32[32, 32] in this model" in str(excinfo.value)
  del abstract["wpe"]  # a checkpoint parameter the model lacks
  with pytest.raises(UserError, match="parameter wpe .16, 32. of checkpoint .* is not in this"):
    source.subtree_target(abstract)
  source.close()


def test_init_from_without_a_checkpoint_or_tokenizer_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="config.init_from=.*holds no checkpoint"):
    ParamsSource(str(tmp_path), "config.init_from")
  with pytest.raises(UserError, match="config.init_from=.*no tokenizer.json"):
    SupervisedFineTuningTask(sft_config(init_from=str(tmp_path)), None)


def test_a_vocab_beyond_padding_of_a_bpe_fitted_here_is_refused():
  with pytest.raises(UserError) as excinfo:
    SupervisedFineTuningTask(sft_config(data__tokenizer="bpe", data__bpe_vocab_size=300,
                                        model__vocab_size=50257), None)
  assert_one_line_error(excinfo, "config.model.vocab_size=50257", "embedding rows would never "
                        "be trained", "config.model.vocab_size=0")


def test_characters_outside_the_pretrained_vocabulary_are_dropped(initialised):
  task = initialised[0].task
  (ids,) = task._encode(["a\u2603b"])  # pylint: disable=protected-access
  np.testing.assert_array_equal(ids, task.tokenizer.encode("ab"))


# ------------------------------------------------------------------------ runs and resume
def test_sft_run_through_main_reports_heldout_accuracy(finetuned):
  workdir, summary, log_text = finetuned
  assert summary["step"] == 3
  assert 0.0 <= summary["val_accuracy"] <= 1.0
  assert {"val_loss", "val_cls_loss", "val_lm_loss", "accuracy", "lm_loss"} <= set(summary)
  assert "left as initialised: cls_head/bias, cls_head/kernel" in log_text
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["task"] == "sft"


def test_resume_takes_precedence_over_init_from(finetuned, pretrained):
  workdir, _, _ = finetuned
  trainer = Trainer(sft_config(init_from=pretrained[0]), workdir)
  state = trainer.restore_or_init()
  assert int(state.step) == 3
  params = flat(state.params)
  assert not np.array_equal(params["wte/embedding"], pretrained[1]["wte/embedding"])
  np.testing.assert_array_equal(params["cls_head/kernel"],
                                flat(trainer.restore_latest().params)["cls_head/kernel"])


def test_eval_accuracy_counts_every_heldout_example_once(initialised):
  trainer, state = initialised
  task, held = trainer.task, trainer.task.heldout_set
  assert held.num_examples % 16 != 0  # the last batch is partial
  metrics = trainer.evaluate(state.params)
  lm_logits, logits = jax.jit(lambda p, t, n: task.model.apply({"params": p}, t, n))(
      jax.device_get(state.params), held.tokens, held.lengths)
  expected = np.mean(np.argmax(logits, -1) == held.labels)
  np.testing.assert_allclose(metrics["val_accuracy"], expected, atol=1e-6)
  # The LM loss is a mean over every held-out token, not a mean of per-batch means.
  real = np.arange(1, held.tokens.shape[1])[None, :] < np.asarray(held.lengths)[:, None]
  log_probs = jax.nn.log_softmax(np.asarray(lm_logits[:, :-1]), axis=-1)
  token_ce = -np.take_along_axis(np.asarray(log_probs), held.tokens[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(metrics["val_lm_loss"], token_ce[real].mean(), rtol=1e-5)
  weights = sum(b["weights"].sum() for b in task.eval_batches())
  assert weights == held.num_examples == len(task.splits.heldout_texts)


def test_init_from_a_run_whose_newest_checkpoint_is_corrupt_uses_the_one_before(tmp_path,
                                                                                caplog):
  lm_dir = tmp_path / "lm"
  config = tiny_config(train__steps=4, checkpoint__every=2, eval__num_batches=0,
                       sample__num_samples=0)
  Trainer(config, str(lm_dir)).train()
  for path in (lm_dir / "checkpoints" / "4" / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b"garbage")
  with caplog.at_level("WARNING"):
    state = Trainer(sft_config(init_from=str(lm_dir)), str(tmp_path / "sft")).restore_or_init()
  assert "unreadable" in caplog.text and "/4" in caplog.text
  assert (lm_dir / "checkpoints" / "4").is_dir()  # the other run's files are left alone
  # The parameters are step 2's.
  (lm_dir / "checkpoints" / "4").rename(lm_dir / "checkpoints" / "broken")
  step2 = flat(Trainer(tiny_config(), str(lm_dir)).restore_latest().params)
  params = flat(state.params)
  for name, value in step2.items():
    np.testing.assert_array_equal(params[name], value)

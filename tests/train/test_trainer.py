"""The generic trainer on a tiny GPT: overfitting, sharding equivalence, accumulation,
non-finite guard, restoring onto another mesh, refusing another model's checkpoint."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_one_line_error, tiny_config
from genvis.errors import UserError
from genvis.train import xla_options
from genvis.train.trainer import Trainer, TrainingDiverged

NO_EXTRAS = dict(sample__num_samples=0, eval__num_batches=0)


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line)["loss"] for line in f]


def params_of(state):
  return jax.tree.map(np.asarray, jax.device_get(state.params))


def test_a_tiny_batch_is_overfit(tmp_path):
  config = tiny_config(train__steps=150, optim__lr=1e-2, optim__warmup_steps=5,
                       optim__decay="constant", optim__weight_decay=0.0,
                       **NO_EXTRAS)
  trainer = Trainer(config, str(tmp_path))
  state = trainer.restore_or_init()
  step = trainer.compile_train_step()
  batch = trainer.global_batch(trainer.task.train_batch(0))  # the same batch every step
  history = []
  for _ in range(150):
    state, metrics = step(state, batch)
    history.append(float(metrics["loss"]))
  assert history[0] > 3.0  # ~ln(vocab) at init
  assert history[-1] < 0.05, history[-10:]


MESHES = {
    "data_parallel": (8, 1, 1),
    "fsdp": (1, 8, 1),
    "tensor_parallel": (2, 1, 4),
    "all_three": (2, 2, 2),
}


@pytest.fixture(scope="module")
def single_device_losses(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("single"))
  Trainer(tiny_config(mesh__shape=(1, 1, 1), **NO_EXTRAS), workdir,
          devices=jax.devices()[:1]).train()
  return losses(workdir)


@pytest.mark.parametrize("name", sorted(MESHES))
def test_sharded_training_matches_one_device(name, single_device_losses, tmp_path):
  trainer = Trainer(tiny_config(mesh__shape=MESHES[name], **NO_EXTRAS), str(tmp_path))
  state = trainer.restore_or_init()
  kernel = state.params["blocks"]["layer_0"]["mlp"]["fc"]["kernel"]
  # The parameters really are split as the mesh says: (embed, mlp) -> (fsdp, tensor).
  _, fsdp, tensor = MESHES[name]
  assert kernel.addressable_shards[0].data.shape == (32 // fsdp, 128 // tensor)
  trainer.train()
  # float32 on CPU; sharded reductions sum in a different order: agree to 1e-5.
  np.testing.assert_allclose(losses(str(tmp_path)), single_device_losses, rtol=1e-5)
  assert len(single_device_losses) == 5


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
  states = []
  for accum in (1, 4):
    trainer = Trainer(tiny_config(train__grad_accum_steps=accum, **NO_EXTRAS),
                      str(tmp_path / f"accum{accum}"))
    state, step = trainer.restore_or_init(), trainer.compile_train_step()
    for s in range(3):
      state, _ = step(state, trainer.global_batch(trainer.task.train_batch(s)))
    states.append(params_of(state))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6), *states)


def test_ema_tracks_parameters(tmp_path):
  trainer = Trainer(tiny_config(train__ema_decay=0.5, **NO_EXTRAS), str(tmp_path))
  state, step = trainer.restore_or_init(), trainer.compile_train_step()
  before = params_of(state)
  state, _ = step(state, trainer.global_batch(trainer.task.train_batch(0)))
  after, ema = params_of(state), jax.tree.map(np.asarray, jax.device_get(state.ema_params))
  expected = jax.tree.map(lambda b, a: 0.5 * b + 0.5 * a, before, after)
  jax.tree.map(lambda e, x: np.testing.assert_allclose(e, x, rtol=1e-6, atol=1e-7), ema, expected)
  # Evaluation and samples use the EMA when there is one.
  assert trainer.shown_params(state) is state.ema_params
  assert Trainer.shown_params(state.replace(ema_params=None)) is state.params


def test_non_finite_loss_stops_at_its_step_and_is_never_saved(tmp_path):
  config = tiny_config(train__steps=8, checkpoint__every=2, **NO_EXTRAS)
  trainer = Trainer(config, str(tmp_path))
  poison = trainer.task.train_batch(3)["inputs"].sum()
  loss_fn = trainer.task.loss_fn

  def poisoned(params, batch, rng, *, train):
    loss, metrics = loss_fn(params, batch, rng, train=train)
    loss = jnp.where(batch["inputs"].sum() == poison, jnp.nan, loss)
    return loss, {**metrics, "loss": loss}

  trainer.task.loss_fn = poisoned
  with pytest.raises(TrainingDiverged, match="at step 3 "):
    trainer.train()
  assert trainer.checkpointer.all_steps() == [2]
  state = Trainer(config, str(tmp_path)).restore_latest()
  assert int(state.step) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params_of(state)))


def test_restore_onto_a_different_mesh(tmp_path):
  Trainer(tiny_config(mesh__shape=(8, 1, 1), **NO_EXTRAS), str(tmp_path)).train()
  saved = Trainer(tiny_config(mesh__shape=(8, 1, 1), **NO_EXTRAS), str(tmp_path))
  expected = params_of(saved.restore_latest())
  other = Trainer(tiny_config(mesh__shape=(1, 2, 4), **NO_EXTRAS), str(tmp_path))
  state = other.restore_latest()
  kernel = state.params["blocks"]["layer_0"]["mlp"]["fc"]["kernel"]
  assert kernel.sharding.mesh.shape == {"data": 1, "fsdp": 2, "tensor": 4}
  assert kernel.addressable_shards[0].data.shape == (16, 32)
  jax.tree.map(np.testing.assert_array_equal, params_of(state), expected)


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
  Trainer(tiny_config(**NO_EXTRAS), str(tmp_path)).train()
  other = Trainer(tiny_config(model__num_layers=3, **NO_EXTRAS), str(tmp_path))
  with pytest.raises(UserError, match=r"different model: model.num_layers=2 in the "
                                      r"checkpoint, 3 now") as error:
    other.train()
  assert "\n" not in str(error.value)
  assert other.checkpointer.all_steps() == [5]  # nothing was touched
  # config.json still describes the checkpoint (tools rebuild the run's model from it)
  saved_config = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
  assert saved_config["model"]["num_layers"] == 2


def test_a_checkpoint_of_another_train_state_layout_is_refused_by_key(tmp_path):
  Trainer(tiny_config(train__steps=2, **NO_EXTRAS), str(tmp_path)).train()
  for overrides, fragments in [
      (dict(train__ema_decay=0.5), ("ema_params has 0 arrays in the checkpoint",
                                    "config.train.ema_decay")),
      (dict(optim__clip_norm=0.0), ("opt_state has its arrays at other paths",
                                    "config.optim"))]:
    other = Trainer(tiny_config(train__steps=2, **overrides, **NO_EXTRAS), str(tmp_path))
    with pytest.raises(UserError) as excinfo:
      other.restore_or_init()
    assert_one_line_error(excinfo, "holds a different train state", *fragments)
    assert other.checkpointer.all_steps() == [2]  # not taken for corruption: nothing moved


@pytest.mark.parametrize("overrides, fragment", [
    (dict(checkpoint__keep=0), "config.checkpoint.keep=0 must be >= 1"),
    (dict(checkpoint__every=-1), "config.checkpoint.every=-1 must be >= 0"),
])
def test_bad_checkpoint_settings_are_named_before_anything_is_written(tmp_path, overrides,
                                                                       fragment):
  with pytest.raises(UserError) as excinfo:
    Trainer(tiny_config(**overrides, **NO_EXTRAS), str(tmp_path))
  assert_one_line_error(excinfo, fragment)
  assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("overrides, fragments", [
    (dict(train__ema_decay=0.999, model__param_dtype="bfloat16"),
     ("config.train.ema_decay=0.999 needs float32 parameters, not bfloat16",
      "config.model.param_dtype=float32")),
    (dict(train__grad_accum_steps=3), ("config.train.grad_accum_steps=3 must divide",)),
    (dict(train__log_every=0), ("config.train.log_every=0 must be >= 1",)),
    (dict(eval__every=-1), ("config.eval.every=-1 must be >= 0",)),
    (dict(sample__every=-5), ("config.sample.every=-5 must be >= 0",)),
])
def test_bad_train_settings_are_named_before_the_workdir_changes(tmp_path, overrides,
                                                                 fragments):
  (tmp_path / "config.json").write_text("the earlier run's")
  trainer = Trainer(tiny_config(**overrides, **NO_EXTRAS), str(tmp_path))
  with pytest.raises(UserError) as excinfo:
    trainer.train()
  assert_one_line_error(excinfo, *fragments)
  assert (tmp_path / "config.json").read_text() == "the earlier run's"
  assert not {"metrics.jsonl", "tensorboard"} & set(os.listdir(tmp_path))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  config = tiny_config(train__steps=4, checkpoint__every=2, **NO_EXTRAS)
  Trainer(config, str(tmp_path)).train()
  checkpoints = tmp_path / "checkpoints"
  assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == ["2", "4"]
  for path in (checkpoints / "4" / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 0:
      path.write_bytes(b"garbage")
  (checkpoints / "corrupt-4").mkdir()  # an earlier step 4 was set aside before
  trainer = Trainer(config, str(tmp_path))
  with caplog.at_level("WARNING"):
    state = trainer.restore_or_init()
  assert int(state.step) == 2
  assert "unreadable" in caplog.text
  assert (checkpoints / "corrupt-4-2" / "state").is_dir()  # kept for inspection, out of the way
  assert trainer.checkpointer.all_steps() == [2]


def test_a_checkpoint_older_than_a_model_field_counts_as_its_default(tmp_path):
  trainer = Trainer(tiny_config(**NO_EXTRAS), str(tmp_path))
  older = trainer.task.metadata()
  del older["model"]["attention_pattern"]  # written before the field existed
  trainer.check_checkpoint_meta(older, "old")  # the default: the same model
  banded = Trainer(tiny_config(model__attention_pattern="local", model__local_window=4,
                               **NO_EXTRAS), str(tmp_path))
  with pytest.raises(UserError, match="model.attention_pattern='dense' in the checkpoint, "
                                      "'local' now"):
    banded.check_checkpoint_meta(older, "old")


def test_config_xla_options_reach_the_train_and_eval_compiles_on_their_backend_only(tmp_path):
  own = xla_options.BACKEND_PREFIXES[jax.devices()[0].platform]
  other = next(p for p in xla_options.BACKEND_PREFIXES.values() if p != own)
  # No backend knows these names: a compile that saw one would fail naming it.
  one_eval_batch = dict(NO_EXTRAS, eval__num_batches=1)
  elsewhere = Trainer(tiny_config(train__xla_options={f"{other}no_such_option": True},
                                  **one_eval_batch), str(tmp_path / "other"))
  elsewhere.compile_train_step()
  state = elsewhere.restore_or_init()
  assert np.isfinite(elsewhere.evaluate(state.params)["val_loss"])
  trainer = Trainer(tiny_config(train__xla_options={f"{own}no_such_option": True},
                                **one_eval_batch), str(tmp_path / "own"))
  with pytest.raises(UserError) as excinfo:
    trainer.compile_train_step()
  assert_one_line_error(excinfo, "config.train.xla_options", f"{own}no_such_option")
  with pytest.raises(UserError) as excinfo:
    trainer.evaluate(state.params)
  assert_one_line_error(excinfo, "config.train.xla_options", f"{own}no_such_option")


def test_the_init_compiled_at_o1_on_cpu_gives_the_default_compiles_parameters_bit_for_bit(
    tmp_path):
  trainer = Trainer(tiny_config(**NO_EXTRAS), str(tmp_path))
  options = xla_options.for_init(trainer.platform)
  assert options, "no start-up options on this backend: nothing to compare"
  rng = jax.random.PRNGKey(trainer.config.seed)  # the key restore_or_init starts from
  with trainer.sharding_context():
    init = jax.jit(trainer._init_state, out_shardings=trainer.state_shardings)  # pylint: disable=protected-access
    default = init.lower(rng).compile()(rng)
  ours = trainer.restore_or_init()
  chex.assert_trees_all_equal(ours, default)  # bit for bit

"""Mesh resolution, optimizer and schedule, metrics.jsonl, TensorBoard files, MFU peak, XLA
options."""

import json

import chex
import jax
import ml_collections
import numpy as np
import optax
import pytest

from genvis.errors import UserError
from genvis.train import event_file, mesh, metric_writers, mfu, optimizer, xla_options


def test_mesh_shape_fills_minus_one_and_rejects_bad_shapes():
  assert mesh.mesh_shape((-1, 1, 1), 8) == (8, 1, 1)
  assert mesh.mesh_shape((2, -1, 2), 8) == (2, 2, 2)
  for bad, message in [((3, -1, 1), "does not divide"), ((2, 2, 1), "needs 4 devices"),
                       ((-1, -1, 1), "at most one -1"), ((8, 1), "must give 3 sizes")]:
    with pytest.raises(UserError, match=message):
      mesh.mesh_shape(bad, 8)


def test_mesh_axes_are_auto_and_rules_resolve():
  config = ml_collections.ConfigDict({"shape": (2, 2, 2), "rules": mesh.DEFAULT_RULES})
  m = mesh.make_mesh(config, jax.devices("cpu"))  # 8 simulated (tests/conftest.py)
  assert m.axis_names == mesh.AXES
  assert all(t == jax.sharding.AxisType.Auto for t in m.axis_types)
  assert mesh.batch_sharding(m, mesh.rules(config)).spec[0] == ("data", "fsdp")


def optim_config(**overrides):
  return ml_collections.ConfigDict({
      "name": "adamw", "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 10, "decay": "cosine",
      "decay_steps": 0, "b1": 0.9, "b2": 0.99, "eps": 1e-8, "weight_decay": 0.1,
      "clip_norm": 1.0, **overrides})


def test_schedule_warms_up_then_decays_to_min_lr():
  schedule = optimizer.schedule(optim_config(), 110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(5e-4)
  assert float(schedule(10)) == pytest.approx(1e-3)
  assert float(schedule(60)) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4), rel=1e-4)
  assert float(schedule(110)) == pytest.approx(1e-4)
  linear = optimizer.schedule(optim_config(decay="linear"), 110)
  assert float(linear(60)) == pytest.approx(5.5e-4, rel=1e-4)
  with pytest.raises(UserError, match="config.optim.decay='step'"):
    optimizer.schedule(optim_config(decay="step"), 10)


def test_weight_decay_only_on_matrices():
  params = {"kernel": np.ones((2, 3), np.float32), "bias": np.ones(3, np.float32),
            "scale": np.ones(3, np.float32)}
  tx = optimizer.make_optimizer(optim_config(lr=0.1, warmup_steps=0, decay="constant",
                                             weight_decay=0.5), 10)
  grads = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Zero gradients: only decoupled weight decay moves a parameter, by -lr * wd * value.
  np.testing.assert_allclose(updates["kernel"], -0.05, rtol=1e-6)
  assert np.all(updates["bias"] == 0) and np.all(updates["scale"] == 0)


def test_a_metrics_line_cut_short_is_skipped_and_dropped_on_resume(tmp_path, caplog):
  writer = metric_writers.MetricWriter(str(tmp_path))
  for step in (1, 2, 3):
    writer.write(step, {"loss": 1.0 / step})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 4, "lo')  # the process died mid-append
  with caplog.at_level("WARNING"):
    assert [r["step"] for r in metric_writers.read_metrics(str(tmp_path))] == [1, 2, 3]
  assert "metrics.jsonl line 4 is not a JSON record" in caplog.text
  resumed = metric_writers.MetricWriter(str(tmp_path))
  resumed.drop_after(2)
  resumed.write(3, {"loss": 0.25})
  resumed.close()
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.25}]


def test_crc32c_known_answer():
  assert event_file.crc32c(b"123456789") == 0xE3069283


def test_tensorboard_reads_our_event_file(tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # pylint: disable=import-outside-toplevel
  writer = event_file.EventFileWriter(str(tmp_path))
  writer.scalars(1, {"loss": 2.5})
  writer.scalars(2, {"loss": 1.5})
  writer.close()
  accumulator = EventAccumulator(str(tmp_path))
  accumulator.Reload()
  assert [(e.step, e.value) for e in accumulator.Scalars("loss")] == [(1, 2.5), (2, 1.5)]


def test_cpu_peak_is_measured_and_plausible():
  cpu = jax.devices("cpu")[0]
  peak = mfu.device_peak_flops(cpu)
  assert 1e9 < peak < 1e13
  assert mfu.device_peak_flops(cpu) == peak  # measured once per process


@pytest.mark.parametrize("scale", [0.1, 10.0])  # under and over the clip norm
def test_clipping_with_the_steps_norm_matches_optax_and_keeps_the_state(scale):
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)).astype(np.float32)}
  grads = jax.tree.map(lambda p: (scale * p).astype(np.float32), params)
  tx = optimizer.make_optimizer(optim_config(), 10)
  reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optimizer.schedule(optim_config(), 10), b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1,
      mask=optimizer.weight_decay_mask))
  state = tx.init(params)
  # Same state tree as optax's clipping: checkpoints from before still restore.
  assert jax.tree.structure(state) == jax.tree.structure(reference.init(params))
  expected, _ = reference.update(grads, reference.init(params), params)
  for norm in (None, optax.tree.norm(grads)):  # computed here, or passed by the step
    updates, _ = optax.with_extra_args_support(tx).update(grads, state, params, grad_norm=norm)
    chex.assert_trees_all_close(updates, expected, rtol=1e-6)


def test_weight_decay_mask_is_by_name_not_rank():
  params = {"qkv": {"kernel": np.ones((4, 3, 2, 2)), "bias": np.ones((3, 2, 2))},
            "layers": {"ln_1": {"scale": np.ones((6, 4))}}, "wte": {"embedding": np.ones((5, 4))},
            "wpe": np.ones((8, 4))}
  mask = optimizer.weight_decay_mask(params)
  assert mask == {"qkv": {"kernel": True, "bias": False}, "layers": {"ln_1": {"scale": False}},
                  "wte": {"embedding": True}, "wpe": True}


def test_layer_decay_scales_each_update_by_its_depth():
  """decay^(deepest - depth): the head at the full rate, stacked layers per slice."""
  params = {"embed": np.ones((2, 2), np.float32), "head": np.ones((2, 2), np.float32),
            "stacked": np.ones((3, 2), np.float32)}
  depths = {"embed": 0, "head": 4, "stacked": np.arange(1, 4)}
  tx = optimizer.make_optimizer(
      optim_config(lr=0.1, warmup_steps=0, decay="constant", weight_decay=0.0, clip_norm=0.0,
                   layer_decay=0.5), 10, (lambda names: depths[names[0]], 4))
  grads = jax.tree.map(np.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  step = float(updates["head"][0, 0])  # Adam's first step: -lr * sign(grad)
  assert step == pytest.approx(-0.1, rel=1e-3)
  np.testing.assert_allclose(updates["embed"], step / 16, rtol=1e-6)
  np.testing.assert_allclose(updates["stacked"][:, 0], step * np.array([1 / 8, 1 / 4, 1 / 2]),
                             rtol=1e-6)


@pytest.mark.parametrize("key, value", [
    ("eps", 0.0), ("b1", 1.0), ("b2", 1.0), ("b2", -0.5), ("lr", 0.0), ("lr", float("nan")),
    ("min_lr", 1e-2), ("weight_decay", -0.1), ("clip_norm", float("inf")),
    ("warmup_steps", -1), ("decay_steps", 10), ("decay_steps", -5)])
def test_out_of_range_optimizer_settings_are_refused_by_name(key, value):
  with pytest.raises(UserError, match=rf"^config\.optim\.{key}={value} must be"):
    optimizer.make_optimizer(optim_config(**{key: value}), 10)


def test_a_parameter_without_gradient_yet_gets_a_finite_update():
  """Why eps = 0 is refused: the step checks the loss and gradient, not the update."""
  params = {"embedding": np.ones((3, 2), np.float32)}
  grads = {"embedding": np.zeros((3, 2), np.float32)}  # rows no batch has looked up
  tx = optimizer.make_optimizer(optim_config(warmup_steps=0), 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(np.isfinite(updates["embedding"]))
  raw = optax.adam(1e-3, eps=0.0)
  updates, _ = raw.update(grads, raw.init(params), params)
  assert np.all(np.isnan(updates["embedding"]))


def test_layer_decay_needs_a_layer_order_and_a_sane_value():
  with pytest.raises(UserError, match="has no layer order"):
    optimizer.make_optimizer(optim_config(layer_decay=0.75), 10)
  with pytest.raises(UserError, match=r"layer_decay=1.5 must be in \(0, 1\]"):
    optimizer.make_optimizer(optim_config(layer_decay=1.5), 10, (lambda names: 0, 1))


def test_xla_options_go_to_their_own_backend_only():
  options = {"xla_gpu_enable_triton_gemm": False, "xla_cpu_ftz": True, "xla_tpu_x": 1,
             "xla_dump_to": "/tmp/d"}
  assert xla_options.for_backend(options, "gpu") == {"xla_gpu_enable_triton_gemm": False,
                                                     "xla_dump_to": "/tmp/d"}
  assert xla_options.for_backend(options, "cpu") == {"xla_cpu_ftz": True, "xla_dump_to": "/tmp/d"}
  assert xla_options.for_backend(options, "tpu") == {"xla_tpu_x": 1, "xla_dump_to": "/tmp/d"}


@pytest.mark.parametrize("options", [{"xla_cpu_no_such_option": True}, {"xla_cpu_ftz": "maybe"}])
def test_option_errors_are_told_from_other_compile_errors(options):
  lowered = jax.jit(lambda x: x + 1).lower(jax.ShapeDtypeStruct((2,), np.float32))
  with pytest.raises(jax.errors.JaxRuntimeError) as excinfo:
    lowered.compile(options)
  assert xla_options.is_option_error(excinfo.value)
  assert not xla_options.is_option_error(RuntimeError("RESOURCE_EXHAUSTED: out of memory"))

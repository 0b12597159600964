"""The generic training loop, for every task.

    Trainer(config, workdir).train()

1. builds the task (data + model), the mesh and the logical sharding rules;
2. derives the state's shardings from the parameters' logical axis names, and initialises the
   state under `jax.jit(out_shardings=)`, so full weights never sit on one device;
3. resumes from the newest readable checkpoint in workdir/checkpoints, if any; else, with
   `config.init_from`, starts from another run's parameters (fine-tuning);
4. compiles the step once, ahead of time, as `jax.jit(in_shardings=, out_shardings=,
   donate_argnums=)`;
5. loops: global batch from this process's rows -> step -> metrics, progress bar, eval,
   checkpoints, samples, and a clean save-and-exit on SIGTERM (preemption). Evaluation and
   samples use the EMA of the parameters when the run keeps one (`config.train.ema_decay`).
"""

import contextlib
import json
import logging
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from genvis import config_lib
from genvis.errors import UserError
from genvis.sampling import image_grid
from genvis.tasks import build_task
from genvis.train import host_memory
from genvis.train import mesh as mesh_lib
from genvis.train import mfu as mfu_lib
from genvis.train import xla_options
from genvis.train.checkpoint import Checkpointer, ParamsSource
from genvis.train.metric_writers import MetricWriter, plot_loss_curve
from genvis.train.optimizer import make_optimizer, schedule
from genvis.train.preemption import StopSignal
from genvis.train.state import TrainState
from genvis.train.step import make_eval_step, make_train_step

log = logging.getLogger(__name__)


# What makes a part of the train state differ between a checkpoint and this run's config.
STATE_PART_KEYS = {"ema_params": "config.train.ema_decay",
                   "opt_state": "config.optim"}


class TrainingDiverged(UserError):
  """A non-finite loss or gradient norm; the state before it was kept."""


class Trainer:
  """Owns the mesh, the sharded state, the compiled steps, checkpoints and logging."""

  def __init__(self, config, workdir: str, devices=None):
    """`devices` restricts the mesh to a subset (default: all devices of all processes)."""
    self.config = config
    self.workdir = workdir
    self.is_primary = jax.process_index() == 0
    self.task = build_task(config, workdir, process_index=jax.process_index(),
                           process_count=jax.process_count())
    self.mesh = mesh_lib.make_mesh(config.mesh, devices)
    self.rules = mesh_lib.rules(config.mesh)
    self.tx = make_optimizer(config.optim, config.train.steps, self.task.lr_layers())
    self.lr_schedule = schedule(config.optim, config.train.steps)
    self.batch_sharding = mesh_lib.batch_sharding(self.mesh, self.rules)
    mesh_lib.check_divisible(self.task.batch_spec(), self.batch_sharding)
    self._derive_state_shardings()
    keep = config.checkpoint.keep
    if keep is not None and keep < 1:  # Orbax would delete each checkpoint as it is written
      raise UserError(f"config.checkpoint.keep={keep} must be >= 1 (None keeps every one)")
    if config.checkpoint.every < 0:
      raise UserError(f"config.checkpoint.every={config.checkpoint.every} must be >= 0 "
                      "(0: only at the end)")
    self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                     every=config.checkpoint.every, keep=config.checkpoint.keep,
                                     async_save=config.checkpoint.async_save)
    # The eval step runs the train step's forward pass: the same compiler options suit it.
    self.platform = self.mesh.devices.flat[0].platform
    self.xla_options = xla_options.for_backend(config.train.xla_options, self.platform)
    self._eval_step = jax.jit(make_eval_step(self.task),
                              out_shardings=mesh_lib.replicated(self.mesh),
                              compiler_options=self.xla_options or None)

  # ----------------------------------------------------------------------------- state
  def sharding_context(self):
    """Mesh and logical rules in scope, so Linen's logical constraints resolve."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.set_mesh(self.mesh))
    stack.enter_context(nn.logical_axis_rules(self.rules))
    return stack

  def _init_state(self, rng) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    return self._state_around(nn.meta.unbox(self.task.init_variables(init_rng)["params"]),
                              state_rng)

  def _state_around(self, params, state_rng) -> TrainState:
    """A step-0 state holding `params`: fresh optimizer state, EMA (if kept) starting at them."""
    ema = params if self.config.train.ema_decay > 0 else None
    return TrainState(step=np.int32(0), params=params, opt_state=self.tx.init(params),
                      rng=state_rng, ema_params=ema)

  def state_from_params(self, params) -> TrainState:
    """The step-0 state a fresh run would start from, holding given parameters (imported
    weights), laid out with this trainer's shardings."""
    _, state_rng = jax.random.split(jax.random.PRNGKey(self.config.seed))
    with self.sharding_context():
      return jax.jit(lambda p: self._state_around(p, state_rng),
                     in_shardings=(self.state_shardings.params,),
                     out_shardings=self.state_shardings)(params)

  def _derive_state_shardings(self):
    rng = jax.random.PRNGKey(self.config.seed)
    with self.sharding_context():
      boxed_params = jax.eval_shape(lambda r: self.task.init_variables(r)["params"], rng)
      abstract = jax.eval_shape(self._init_state, rng)
    replicated = mesh_lib.replicated(self.mesh)
    params = mesh_lib.logical_shardings(boxed_params, self.mesh, self.rules)
    # Optimizer moments shard like the parameters they track; counters are replicated.
    opt_state = optax.tree_map_params(self.tx, lambda _, sharding: sharding, abstract.opt_state,
                                      params, transform_non_params=lambda _: replicated)
    self.state_shardings = TrainState(
        step=replicated, params=params, opt_state=opt_state, rng=replicated,
        ema_params=params if abstract.ema_params is not None else None)
    self.abstract_state = jax.tree.map(
        lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
        abstract, self.state_shardings)
    self.num_params = sum(x.size for x in jax.tree.leaves(abstract.params))

  def _check_ema_precision(self):
    """An EMA kept in 16-bit floats stays put: (1 - decay) of a step's change is below the
    resolution of the value it is added to. Checked for training only: a run's checkpoints
    stay readable for evaluation and sampling."""
    decay = self.config.train.ema_decay
    low = sorted({str(p.dtype) for p in jax.tree.leaves(self.abstract_state.params)
                  if jnp.issubdtype(p.dtype, jnp.floating) and p.dtype.itemsize < 4})
    if decay > 0 and low:
      raise UserError(f"config.train.ema_decay={decay} needs float32 parameters, not {low[0]}: "
                      "its updates would round away (set config.model.param_dtype=float32)")

  def check_checkpoint_meta(self, saved: dict, where: str, *, same_task: bool = True,
                            model_fields: tuple[str, ...] | None = None):
    """Refuse a checkpoint whose model differs from the config's (runtime-only fields such as
    dropout, remat and compute dtype may change between runs). With `same_task=False`
    (init_from: another task's run) only the model and the facts both tasks record count,
    and `model_fields`, when given, names the only model fields compared."""
    current = self.task.metadata()
    # Fields that change how a model runs or starts, not what its parameters compute.
    runtime_only = {"dropout", "attention_dropout", "remat", "dtype", "attention_impl",
                    "init_std", "scale_residual_init", "zero_init_head"}
    model = current.get("model", {})
    defaults = {k: v for k, v in self.task.model_field_defaults().items() if k in model}
    saved_model = {**defaults, **saved.get("model", {})}  # older checkpoints lack new fields
    compared = set(saved_model) | set(model) if model_fields is None else set(model_fields)
    differences = [f"model.{k}={saved_model.get(k)!r} in the checkpoint, {model.get(k)!r} now"
                   for k in sorted(compared)
                   if k not in runtime_only and saved_model.get(k) != model.get(k)]
    # A fact metadata() records now but an older checkpoint lacks is not compared (as model
    # fields count as their defaults); one the checkpoint records is, absent now or not. Of a
    # fact that is a dict, only the entries both record are: a task may stop recording one
    # that turned out not to matter (an SDE's schedule keys that its kind ignores).
    keys = set(saved) if same_task else (set(saved) & set(current)) - {"task"}
    differences += [f"{k}={saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
                    for k in sorted(keys)
                    if k != "model" and not _same_fact(saved.get(k), current.get(k))]
    if differences:
      raise UserError(f"checkpoint {where} was written by a different model: "
                      + "; ".join(differences[:3]))

  def _restore(self) -> TrainState | None:
    """The newest readable checkpoint of this model onto this mesh, or None."""
    restored = self.checkpointer.restore(self.abstract_state, self.check_checkpoint_meta,
                                         part_keys=STATE_PART_KEYS)
    return None if restored is None else restored[0]

  def restore_or_init(self) -> TrainState:
    state = self._restore()
    if state is not None:
      log.info("resumed from checkpoint step %d in %s", int(jax.device_get(state.step)),
               self.checkpointer.directory)
      return state
    init_from = self._check_init_from() if self.config.get("init_from") else None
    with self.sharding_context():
      init = jax.jit(self._init_state, out_shardings=self.state_shardings,
                     compiler_options=xla_options.for_init(self.platform) or None)
      state = init(jax.random.PRNGKey(self.config.seed))
    if init_from is not None:
      state = self._load_init_from(state, *init_from)
    return state

  def _check_init_from(self) -> tuple[ParamsSource, dict, str]:
    """(source, restore target, the source's parameter prefix) for `config.init_from`,
    checked before anything is compiled: the task says which of the other run's parameters
    it takes (`Task.init_from_parts`); their model fields must match this run's and they
    must be a subtree of this model's parameters (a task head may be new)."""
    source = ParamsSource(self.config.init_from, "config.init_from")
    try:
      saved_meta = source.read_meta()
      parts = self.task.init_from_parts(saved_meta)
      self.check_checkpoint_meta(saved_meta, f"{source.where} (config.init_from)",
                                 same_task=False, model_fields=parts.model_fields)
      target, new_names, left_out = source.subtree_target(
          self.abstract_state.params, parts.source_prefix, parts.exclude)
    except Exception:
      source.close()
      raise
    log.info("init_from %s (%s%s; %d of its parameters left out); parameters not in it, "
             "left as initialised: %s", source.where, source.item,
             f"/{parts.source_prefix}" if parts.source_prefix else "", left_out,
             ", ".join(new_names) or "none")
    return source, target, parts.source_prefix

  def _load_init_from(self, state: TrainState, source: ParamsSource, target,
                      prefix: str) -> TrainState:
    """The fresh state with the other run's parameters in place of the initialised ones."""
    try:
      loaded = source.restore(target)
    finally:
      source.close()
    for name in prefix.split("/") if prefix else ():
      loaded = loaded[name]

    def merge(state, loaded):
      return self._state_around(_merge_trees(state.params, loaded), state.rng)

    with self.sharding_context():
      return jax.jit(merge, out_shardings=self.state_shardings, donate_argnums=(0,))(
          state, loaded)

  @staticmethod
  def shown_params(state: TrainState):
    """The parameters evaluation and sampling use: the EMA when the run keeps one (as
    score_sde and `pretrained.load_trained` do), else the training parameters."""
    return state.ema_params if state.ema_params is not None else state.params

  def restore_latest(self) -> TrainState:
    """The newest checkpoint's state; an error if the workdir has none (eval/sample modes)."""
    state = self._restore()
    if state is None:
      raise UserError(f"no checkpoint in {self.checkpointer.directory}; train first")
    return state

  # ----------------------------------------------------------------------------- steps
  def global_batch(self, local: dict) -> dict:
    """Assemble the global jax.Array from this process's rows."""
    return {
        name: jax.make_array_from_process_local_data(
            self.batch_sharding, value, (value.shape[0] * jax.process_count(), *value.shape[1:]))
        for name, value in local.items()
    }

  def compile_train_step(self, compiler_options: dict | None = None):
    """The train step, jitted with the state's and batch's shardings and compiled with
    `config.train.xla_options` for this backend, updated by `compiler_options` (e.g.
    {"xla_cpu_ftz": True}: for this compile only)."""
    step = make_train_step(self.task, self.tx,
                           grad_accum_steps=self.config.train.grad_accum_steps,
                           ema_decay=self.config.train.ema_decay)
    replicated = mesh_lib.replicated(self.mesh)
    jitted = jax.jit(step, in_shardings=(self.state_shardings, self.batch_sharding),
                     out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.batch_sharding)
             for k, s in self.task.batch_spec().items()}
    self._check_train_config()
    with self.sharding_context(), xla_options.errors_name_the_key():
      compiled = jitted.lower(self.abstract_state, batch).compile(
          {**self.xla_options, **(compiler_options or {})})
    # Again, right before stepping: TensorFlow (tfds input pipelines) resets malloc's settings
    # in some runs, and the steps then page-fault their temporaries again.
    host_memory.keep_freed_memory_on_cpu_hosts()
    return compiled

  def _check_train_config(self):
    """Settings only training reads (evaluating or sampling a run never fails on them)."""
    if self.config.train.log_every < 1:
      raise UserError(f"config.train.log_every={self.config.train.log_every} must be >= 1")
    for section in ("eval", "sample"):
      every = self.config[section].every
      if every < 0:
        raise UserError(f"config.{section}.every={every} must be >= 0 (0: only at the end)")
    self._check_ema_precision()
    accum = self.config.train.grad_accum_steps
    mismatch = self.task.microbatch_mismatch() if accum > 1 else ""
    if mismatch:
      raise UserError(f"config.train.grad_accum_steps={accum}: the {self.config.task} task's "
                      f"loss does not split into microbatches: {mismatch}")
    for name, spec in self.task.batch_spec().items():
      if accum < 1 or spec.shape[0] % accum:
        raise UserError(f"config.train.grad_accum_steps={accum} must divide the batch "
                        f"{name!r} of size {spec.shape[0]}")

  def evaluate(self, params) -> dict:
    """Mean of the task's metrics over its held-out batches. A task whose batches may be
    partly padding reports each batch's `weight` (its real examples), and `weight/<name>`
    for a metric averaged over something else (tokens), to weight the means."""
    totals, counts = {}, {}
    if self.config.eval.num_batches == 0:
      return {}
    with self.sharding_context(), xla_options.errors_name_the_key():
      for local in self.task.eval_batches():
        metrics = jax.device_get(self._eval_step(params, self.global_batch(local)))
        weights = {k.removeprefix("weight/"): float(metrics.pop(k))
                   for k in list(metrics) if k.startswith("weight/")}
        default_weight = float(metrics.pop("weight", 1.0))
        for k, v in metrics.items():
          weight = weights.get(k, default_weight)
          totals[k] = totals.get(k, 0.0) + weight * float(v)
          counts[k] = counts.get(k, 0.0) + weight
    means = self.task.held_out_means({k: v / max(counts[k], 1e-9) for k, v in totals.items()})
    metrics = {f"val_{k}": v for k, v in means.items()}
    with self.sharding_context():
      for name, evaluator in self.task.evaluators().items():
        metrics.update({f"val_{name}/{k}": float(v) for k, v in evaluator(params).items()})
    return metrics

  def sample(self, params, step: int) -> dict:
    rng = jax.random.fold_in(jax.random.PRNGKey(self.config.seed + 2), step)
    with self.sharding_context():
      samples = self.task.sample(params, rng)
    if self.is_primary and samples.get("texts"):
      path = os.path.join(self.workdir, f"samples_step{step}.txt")
      with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n---\n\n".join(samples["texts"]))
    # Pictures (uint8 [H, W, C] grids) become <name>_step<step>.png next to the checkpoints.
    samples["image_files"] = []
    for name, picture in samples.get("images", {}).items():
      path = os.path.join(self.workdir, f"{name}_step{step}.png")
      if self.is_primary:
        image_grid.save_png(path, picture)
      samples["image_files"].append(path)
    return samples

  # ----------------------------------------------------------------------------- loop
  def train(self) -> dict:
    cfg = self.config.train
    total = cfg.steps
    self._check_train_config()  # before the init, the restore and any write to the workdir
    state = self.restore_or_init()
    # After the task resolved vocab_size, and only once the workdir's checkpoint (if any) was
    # accepted: a refused resume must leave the config that describes that checkpoint.
    if self.is_primary:
      config_lib.write_config(self.config, self.workdir)
    start = int(jax.device_get(state.step))
    # Opened here, not in __init__: evaluating or sampling a run adds no event files to it.
    self.writer = MetricWriter(self.workdir, enabled=self.is_primary)
    self.writer.drop_after(start)  # a crashed run logged steps past its last checkpoint
    compile_start = time.perf_counter()
    train_step = self.compile_train_step()
    log.info("compiled the train step in %.1fs", time.perf_counter() - compile_start)
    peak = mfu_lib.total_peak_flops(self.mesh.devices.size)
    flops_per_step = self.task.flops_per_step(self.num_params)
    stop = StopSignal(install=jax.process_count() == 1)
    progress = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                         disable=not (self.is_primary and cfg.progress_bar))
    summary = {"start_step": start, "params": self.num_params}
    pending, window_start, window_steps = [], time.perf_counter(), 0
    step = start
    try:
      while step < total:
        state, metrics = train_step(state, self.global_batch(self.task.train_batch(step)))
        pending.append((step, metrics))
        step += 1
        window_steps += 1
        preempted = stop.requested(step, self.checkpointer)
        eval_due = self._due(self.config.eval.every, step, total)
        save_due = self.checkpointer.should_save(step) or step == total or preempted
        sample_due = self._due(self.config.sample.every, step, total) and step < total
        flush = step % cfg.log_every == 0 or eval_due or save_due or sample_due
        if flush:
          record = self._flush(pending)  # raises TrainingDiverged before anything is saved
          elapsed = time.perf_counter() - window_start
          record.update(self._throughput(window_steps, elapsed, flops_per_step, peak))
          record["lr"] = float(self.lr_schedule(step - 1))
          if eval_due:
            record.update(self.evaluate(self.shown_params(state)))
          self.writer.write(step, record)
          summary.update(record)
          progress.set_postfix(self._postfix(record), refresh=False)
        if save_due:
          self.checkpointer.save(step, state, self.task.metadata())
        if sample_due:
          self.print_samples(self.sample(self.shown_params(state), step), progress)
        if flush:  # throughput windows time training only, not eval, saves or samples
          pending, window_start, window_steps = [], time.perf_counter(), 0
        progress.update(1)
        if preempted:
          log.warning("stop requested (SIGTERM): saved step %d, exiting", step)
          summary["preempted"] = True
          break
    finally:  # also when the run diverged: no Orbax threads or open event file stay behind
      progress.close()
      stop.uninstall()
      self.checkpointer.wait()
      self.checkpointer.close()
      self.writer.close()
    summary["step"] = step
    if step >= total and not summary.get("preempted"):
      self._finish(state, step, summary, start)
    return summary

  def _finish(self, state, step, summary, start):
    if start >= step:  # nothing trained in this run: evaluate what was restored
      summary.update(self.evaluate(self.shown_params(state)))
    if self.is_primary:
      plot_loss_curve(self.workdir)
    samples = self.sample(self.shown_params(state), step)
    summary["samples"] = samples.get("texts", [])
    self.print_samples(samples, None)

  @staticmethod
  def _due(every: int, step: int, total: int) -> bool:
    return step == total or (every > 0 and step % every == 0)

  def _flush(self, pending) -> dict:
    """Fetch the metrics of steps since the last flush; stop at the first non-finite one."""
    fetched = jax.device_get([m for _, m in pending])
    for (step, _), metrics in zip(pending, fetched):
      if not metrics["finite"]:
        raise TrainingDiverged(
            f"non-finite loss or gradient at step {step} (loss={float(metrics['loss'])}, "
            f"grad_norm={float(metrics['grad_norm'])}); stopped without saving it — the "
            f"newest checkpoint in {self.checkpointer.directory} is from before")
    keys = [k for k in fetched[-1] if k != "finite"]
    return {k: float(np.mean([m[k] for m in fetched])) for k in keys}

  def _throughput(self, steps, seconds, flops_per_step, peak) -> dict:
    if steps == 0 or seconds <= 0:
      return {}
    out = {"steps_per_s": steps / seconds,
           "tokens_per_s": steps * self.task.tokens_per_step() / seconds}
    if peak:
      out["mfu"] = steps * flops_per_step / seconds / peak
    return out

  @staticmethod
  def _postfix(record) -> dict:
    postfix = {"loss": f"{record['loss']:.4f}"}
    if "val_loss" in record:
      postfix["val"] = f"{record['val_loss']:.4f}"
    if "tokens_per_s" in record:
      postfix["tok/s"] = f"{record['tokens_per_s']:,.0f}"
    if "mfu" in record:
      postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
    return postfix

  def print_samples(self, samples, progress):
    if not self.is_primary:
      return
    write = progress.write if progress is not None else print
    for i, text in enumerate(samples.get("texts", [])):
      write(f"--- sample {i} ---\n{text}")
    for path in samples.get("image_files", []):
      write(f"wrote {path}")


def _same_fact(saved, current) -> bool:
  """Checkpoint metadata `saved` agrees with `current`; dicts on the entries both hold."""
  if isinstance(saved, dict) and isinstance(current, dict):
    return all(saved[k] == current[k] for k in saved.keys() & current.keys())
  return saved == current


def _merge_trees(base: dict, update: dict) -> dict:
  """`base` with the leaves of `update` (a subtree of it: same nested-dict paths) replaced."""
  return {k: (_merge_trees(v, update[k]) if isinstance(v, dict) else update[k])
          if k in update else v for k, v in base.items()}


def summary_json(summary: dict) -> str:
  return json.dumps({k: v for k, v in summary.items() if k != "samples"}, sort_keys=True)

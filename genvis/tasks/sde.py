"""Score-based generative modelling through SDEs (Song et al. 2021): the "sde" task.

Data: a 2-D toy density (`config.data.source="toy2d"`, genvis/data/toy2d.py) or images
(digits, scenes, tfds mnist / cifar10, folders: genvis/data/image_batches.py), as x in the
data's own scale ([-1, 1] for images). Model: the MLP score network for points
(genvis/models/score_mlp.py), the DDPM++ / NCSN++ U-Net for images (genvis/models/unet.py).
The SDE (`config.sde.kind`: vesde | vpsde | subvpsde) and its schedule come from config.sde.

Loss: continuous-time denoising score matching (genvis/diffusion/losses.py), t ~ U(eps, T),
weighted by lambda = s(t)^2 (`weighting="sigma2"`, score_sde's default) or by g(t)^2
(`"likelihood"`), a mean (`reduce_mean`) or a sum over each example's dims. Held-out batches
carry fixed (t, noise) per batch index, so every evaluation scores the same draws.

Output parameterisation, as score_sde's `get_score_fn`: the network's output is a unit-scale
quantity and the score is that divided by the marginal std s(t). With
`config.model.scale_by_sigma` (NCSN++ for VE) the network divides by s(t) itself and its
output is the score; without it (DDPM++ for VP and sub-VP) the network predicts the noise z
and the score is -output / s(t). Either way the s^2-weighted loss is ||output - (+-z)||^2, of
unit scale at every t. The network is always given s(t) (`std=`), which NCSN++ also embeds.

Class-conditional sampling (`config.sde.classifier`): a separate small noise-conditional
classifier (genvis/models/noisy_classifier.py) is trained in the same run, on the same
diffused x_t as the score loss, and its cross-entropy (times `classifier_weight`) is added to
the loss. The two networks share no parameters, so neither loss moves the other's weights;
keeping them in one parameter tree ({"score": ..., "classifier": ...}) gives them one
optimizer, one EMA and one checkpoint, with no second training loop. Sampling guides the
unconditional score with grad log p_t(y | x_t) (controllable.conditional_score).

Evaluators (`evaluators()`, logged as val_likelihood/...): test bits/dim through the
probability-flow ODE (likelihood.ode_bits_per_dim) on the first `config.eval.bpd_examples`
test examples: images are dequantised with uniform noise over their K-level bins (digits 17,
8-bit images 256) and the bin offset added; toy points are continuous, with the exact trace
and, for the Gaussian mixtures, the data's true NLL at eps next to the model's.

Samples (`sample` hook; the trainer writes <name>_step<N>.png): the PC sampler's samples, an
inpainting grid (top half known: original | given half | completions), colourisation for RGB
data, the sampling trajectory (a few snapshots), and with the classifier one row per class;
for 2-D data, scatter plots of test points vs samples and of the trajectory.

Which parameters: with `config.train.ema_decay` > 0 the trainer passes the EMA parameters to
evaluators and sample hooks, and `pretrained.load_trained` returns them for a finished run,
which the benchmarks evaluate and sample with.
"""

import dataclasses
import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from genvis.data import toy2d
from genvis.data.image_batches import ImageBatches
from genvis.diffusion import controllable, likelihood, losses, samplers
from genvis.diffusion import sde as sde_lib
from genvis.errors import UserError
from genvis.models import noisy_classifier, score_mlp, unet
from genvis.sampling import image_grid, scatter_plot
from genvis.tasks.base import Task

SDE_CLASSES = {"vesde": sde_lib.VESDE, "vpsde": sde_lib.VPSDE, "subvpsde": sde_lib.SubVPSDE}
# The config.sde schedule keys each SDE reads (the others it ignores).
SCHEDULE_KEYS = {"vesde": ("sigma_min", "sigma_max"), "vpsde": ("beta_min", "beta_max"),
                 "subvpsde": ("beta_min", "beta_max")}
WEIGHTINGS = {"sigma2": "score_matching", "likelihood": "likelihood"}
TOY_SOURCE = "toy2d"
# Fixed evaluation draws, independent of config.seed: runs with other seeds score the same
# (t, noise) and the same dequantisation noise.
EVAL_NOISE_SEED = 20210301
LIKELIHOOD_SEED = 20210302
GRID_COLUMNS = 8


def build_sde(sde_config) -> sde_lib.SDE:
  """The forward SDE that config.sde names. Its `num_scales` (the discrete-time grid of the
  DDPM / SMLD losses) stays at the default: this task's loss, samplers (sample.num_steps) and
  likelihood are continuous-time and never read it."""
  kind = sde_config.kind
  if kind not in SDE_CLASSES:
    raise UserError(f"config.sde.kind={kind!r}: expected one of {', '.join(SDE_CLASSES)}")
  return SDE_CLASSES[kind](**{key: sde_config[key] for key in SCHEDULE_KEYS[kind]})


def _check_fields(model_section, known: dict, what: str):
  unknown = sorted(set(model_section) - set(known))
  if unknown:
    raise UserError(f"config.model.{unknown[0]} is not a field of {what} (fields: "
                    f"{', '.join(sorted(known))})")


def build_score_model(config, data_shape, is_toy: bool):
  """(model config, module): the MLP for points, the U-Net for images; config.model's
  data_dim / image_size / channels at 0 are filled from the data (recorded in config.json),
  any other value must match it."""
  section = config.model
  if is_toy:
    _check_fields(section, score_mlp.default_fields(), "the 2-D score MLP "
                  "(genvis/models/score_mlp.py; config.data.source='toy2d')")
    fill = {"data_dim": data_shape[0]}
  else:
    _check_fields(section, unet.default_fields(), "the U-Net (genvis/models/unet.py)")
    height, width, channels = data_shape
    if height != width:
      raise UserError(f"config.data gives {height}x{width} images: the U-Net needs square "
                      "images (set config.data.resolution)")
    fill = {"image_size": height, "channels": channels}
  for key, value in fill.items():
    if section[key] == 0:
      section[key] = value
    elif section[key] != value:
      raise UserError(f"config.model.{key}={section[key]}, but the data has {key}={value} "
                      f"(set it to {value}, or 0 to take it from the data)")
  if is_toy:
    model_config = score_mlp.ScoreMLPConfig(**section.to_dict())
    return model_config, score_mlp.ScoreMLP(model_config)
  model_config = unet.UNetConfig(**section.to_dict())
  if model_config.num_classes:
    raise UserError(f"config.model.num_classes={model_config.num_classes}: the sde task "
                    "trains an unconditional score; for class-conditional samples set "
                    "config.sde.classifier=True")
  return model_config, unet.UNet(model_config)


def _jsonable(value):
  """Tuples as lists, as a checkpoint's JSON metadata reads back."""
  return json.loads(json.dumps(value))


class ScoreSDETask(Task):
  """Denoising score matching on `config.data` under `config.sde`."""

  def __init__(self, config, workdir, *, process_index=0, process_count=1):
    super().__init__(config, workdir, process_index=process_index, process_count=process_count)
    self.sde = build_sde(config.sde)
    sde_config = config.sde
    if sde_config.weighting not in WEIGHTINGS:
      raise UserError(f"config.sde.weighting={sde_config.weighting!r}: expected one of "
                      f"{', '.join(WEIGHTINGS)}")
    if not 0 < sde_config.eps < self.sde.T:
      raise UserError(f"config.sde.eps={sde_config.eps}: the smallest training time must be "
                      f"in (0, T={self.sde.T})")
    if config.eval.bpd_examples > 0 and config.eval.bpd_batch < 1:
      raise UserError(f"config.eval.bpd_batch={config.eval.bpd_batch}: the likelihood "
                      "evaluator needs >= 1 example per ODE solve (or config.eval."
                      "bpd_examples=0 to turn it off)")
    self.weighting = WEIGHTINGS[sde_config.weighting]
    self.reduce = "mean" if sde_config.reduce_mean else "sum"
    self.eps = float(sde_config.eps)
    self.use_classifier = bool(sde_config.classifier)
    # Guidance scales the classifier's gradient: without a classifier it would do nothing.
    # (sample.per_class has a non-zero default, so its being set cannot be told apart.)
    if not self.use_classifier and config.sample.guidance_scale != 1.0:
      raise UserError(f"config.sample.guidance_scale={config.sample.guidance_scale} scales "
                      "the classifier's gradient, but config.sde.classifier=False trains no "
                      "classifier: set config.sde.classifier=True, or leave guidance_scale at "
                      "1.0")
    self.is_toy = config.data.source == TOY_SOURCE
    rows = dict(process_index=process_index, process_count=process_count)
    if self.is_toy:
      self.batches = toy2d.Toy2DBatches(config.data, config.seed, **rows)
      self.test_x, self.test_labels = self.batches.test_points, self.batches.test_labels
      self.num_classes = self.batches.num_classes
    else:
      self.batches = ImageBatches(config.data, config.seed, labels=self.use_classifier, **rows)
      self.train_set, self.test_set = self.batches.train_set, self.batches.test_set
      self.test_x, self.test_labels = self.test_set.images, self.test_set.labels
      self.num_classes = self.train_set.num_classes
    self.data_shape = tuple(self.test_x.shape[1:])
    self.model_config, self.model = build_score_model(config, self.data_shape, self.is_toy)
    self.classifier_config = self.classifier = None
    if self.use_classifier:
      self.classifier_config = noisy_classifier.NoisyClassifierConfig(
          num_classes=self.num_classes, kind="mlp" if self.is_toy else "conv",
          width=sde_config.classifier_width, num_layers=sde_config.classifier_layers)
      self.classifier = noisy_classifier.NoisyClassifier(self.classifier_config)
    self.num_levels = None if self.is_toy else self._check_levels()

  def _check_levels(self) -> int | None:
    """The K of the images' K-level grid over [-1, 1] (for bits/dim), checked on the test
    images the likelihood reads; None when bits/dim is off."""
    if self.config.eval.bpd_examples <= 0:
      return None
    levels = self.config.eval.num_levels or (17 if self.config.data.source == "digits"
                                             else 256)
    width = likelihood.bin_width(levels)
    images = self.likelihood_examples()
    steps = (images + 1.0) / width
    if np.max(np.abs(steps - np.round(steps))) > 1e-3:
      raise UserError(f"config.eval.num_levels={self.config.eval.num_levels}: the test images "
                      f"are not on a {levels}-level grid over [-1, 1] (resized or rendered "
                      "data?); set num_levels, or config.eval.bpd_examples=0")
    return levels

  # ----------------------------------------------------------------------------- batches
  def batch_spec(self):
    batch = self.config.data.batch_size
    spec = {"x": jax.ShapeDtypeStruct((batch, *self.data_shape), jnp.float32),
            "weights": jax.ShapeDtypeStruct((batch,), jnp.float32)}
    if self.use_classifier:
      spec["labels"] = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return spec

  def _as_task_batch(self, batch: dict) -> dict:
    """A source's batch with the keys of batch_spec ("images" -> "x"; labels only when the
    classifier trains)."""
    out = {"x": batch.get("x", batch.get("images")), "weights": batch["weights"]}
    if self.use_classifier:
      out["labels"] = batch["labels"]
    return out

  def init_variables(self, rng):
    score_rng, classifier_rng = jax.random.split(rng)
    x = jnp.zeros((1, *self.data_shape), jnp.float32)
    t, std = jnp.full((1,), 0.5), jnp.ones((1,))
    params = {"score": self.model.init(score_rng, x, t, std=std)["params"]}
    if self.classifier is not None:
      params["classifier"] = self.classifier.init(classifier_rng, x, std)["params"]
    return {"params": params}

  def train_batch(self, step):
    return self._as_task_batch(self.batches.train_batch(step))

  def eval_batches(self):
    """The held-out batches (`eval.num_batches` < 0: all), each with its fixed t [B] and
    noise [B, ...] drawn from (EVAL_NOISE_SEED, batch index)."""
    global_batch = self.config.data.batch_size
    for index, batch in self.batches.eval_batches(self.config.eval.num_batches):
      rng = np.random.default_rng([EVAL_NOISE_SEED, index])
      t = self.eps + (self.sde.T - self.eps) * rng.random(global_batch)
      noise = rng.standard_normal((global_batch, *self.data_shape))
      rows = self.batches.rows
      yield {**self._as_task_batch(batch), "t": t[rows].astype(np.float32),
             "noise": noise[rows].astype(np.float32)}

  # ----------------------------------------------------------------------------- networks
  def score(self, params, x, t, *, train: bool = False, dropout_rng=None):
    """The score s(x, t) [B, ...] of the network `params["score"]` (module docs)."""
    _, std = samplers.kernel(self.sde, t)
    out = self.model.apply({"params": params["score"]}, x, t, train=train, std=std,
                           rngs=None if dropout_rng is None else {"dropout": dropout_rng})
    if self.model_config.scale_by_sigma:
      return out
    return -out / sde_lib.broadcast_to_data(std, out)

  def classifier_logits(self, params, x, t):
    """log p_t(y | x) up to a constant: logits [B, classes] of the noise-conditional
    classifier, fed x / sqrt(a(t)^2 + s(t)^2) (unit scale under every SDE)."""
    a, std = samplers.kernel(self.sde, t)
    scale = jax.lax.rsqrt(a**2 + std**2)
    return self.classifier.apply({"params": params["classifier"]},
                                 x * sde_lib.broadcast_to_data(scale, x), std)

  def score_pytree(self, params) -> jax.tree_util.Partial:
    """fn(x, t) with the parameters traced, for the samplers (no recompile per params)."""
    return jax.tree_util.Partial(self._score_of, params)

  def _score_of(self, params, x, t):
    return self.score(params, x, t)

  def _classifier_of(self, params, x, t):
    return self.classifier_logits(params, x, t)

  # ----------------------------------------------------------------------------- loss
  def loss_fn(self, params, batch, rng, *, train):
    """The weighted DSM loss (plus the classifier's cross-entropy on the same x_t)."""
    x0, weights = batch["x"], batch["weights"]
    time_rng, noise_rng, dropout_rng = jax.random.split(rng, 3)
    if "t" in batch:  # held-out batches fix their draws
      t, noise = batch["t"], batch["noise"]
    else:
      t = jax.random.uniform(time_rng, x0.shape[:1], minval=self.eps, maxval=self.sde.T)
      noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
    score_fn = functools.partial(self.score, params, train=train, dropout_rng=dropout_rng)
    per_example = losses.dsm_per_example(self.sde, score_fn, x0, t, noise,
                                         weighting=self.weighting, reduce=self.reduce)
    total = jnp.maximum(jnp.sum(weights), 1.0)
    mean = lambda values: jnp.sum(values * weights) / total
    loss = mean(per_example)
    metrics = {"dsm_loss": loss}
    if self.classifier is not None:
      marginal_mean, std = self.sde.marginal_prob(x0, t)
      x_t = marginal_mean + sde_lib.broadcast_to_data(std, x0) * noise
      logits = self.classifier_logits(params, x_t, t)
      labels = batch["labels"]
      cross_entropy = mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
      metrics["classifier_loss"] = cross_entropy
      metrics["classifier_accuracy"] = mean((jnp.argmax(logits, -1) == labels).astype(
          jnp.float32))
      loss = loss + self.config.sde.classifier_weight * cross_entropy
    metrics["loss"] = loss
    if not train:
      metrics["weight"] = jnp.sum(weights)  # held-out batches may end in padding rows
    return loss, metrics

  @functools.cached_property
  def _forward_flops(self) -> float:
    """FLOPs of one example's score (and classifier) forward, from XLA's cost analysis."""
    abstract = jax.eval_shape(
        lambda: nn.meta.unbox(self.init_variables(jax.random.key(0))["params"]))
    x = jax.ShapeDtypeStruct((1, *self.data_shape), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)

    def forward(params, x, t):
      out = self.score(params, x, t)
      return (out, self.classifier_logits(params, x, t)) if self.classifier else out

    cost = jax.jit(forward).lower(abstract, x, t).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))

  def flops_per_step(self, num_params):
    return 3.0 * self._forward_flops * self.config.data.batch_size

  def tokens_per_step(self):
    return self.config.data.batch_size  # images or points

  def model_field_defaults(self):
    defaults = score_mlp.default_fields() if self.is_toy else unet.default_fields()
    return _jsonable(defaults)

  def metadata(self):
    sde_config = self.config.sde
    return {"task": "sde", "model": _jsonable(dataclasses.asdict(self.model_config)),
            "data_shape": list(self.data_shape),
            # Only the keys this SDE reads: a resume after changing another is not refused.
            "sde": {k: sde_config[k] for k in ("kind", *SCHEDULE_KEYS[sde_config.kind])},
            "classifier": None if self.classifier_config is None else _jsonable(
                dataclasses.asdict(self.classifier_config))}

  # ----------------------------------------------------------------------------- likelihood
  def likelihood_examples(self) -> np.ndarray:
    """The fixed test examples whose bits/dim the evaluator reports (the first N)."""
    return self.test_x[:self.config.eval.bpd_examples]

  def evaluators(self):
    return {"likelihood": self.evaluate_likelihood} if self.config.eval.bpd_examples > 0 else {}

  @functools.cached_property
  def _likelihood_fn(self):
    cfg = self.config.eval
    kwargs = dict(num_levels=self.num_levels, divergence=cfg.likelihood_divergence,
                  rtol=cfg.likelihood_tol, atol=cfg.likelihood_tol, eps=self.eps)

    def run(params, x, rng):
      bits, result = likelihood.ode_bits_per_dim(self.sde, self.score_pytree(params), x, rng,
                                                 **kwargs)
      return bits, result.logp, result.num_steps

    return jax.jit(run)

  def evaluate_likelihood(self, params) -> dict:
    """Mean test bits/dim (and NLL in nats per example) through the probability-flow ODE,
    in chunks of eval.bpd_batch examples (the last one padded)."""
    examples = self.likelihood_examples()
    chunk = min(self.config.eval.bpd_batch, len(examples))
    bits, logps, steps = [], [], []
    for index, start in enumerate(range(0, len(examples), chunk)):
      part = examples[start:start + chunk]
      padded = np.concatenate([part, np.repeat(part[:1], chunk - len(part), axis=0)])
      rng = jax.random.fold_in(jax.random.key(LIKELIHOOD_SEED), index)
      chunk_bits, chunk_logp, num_steps = jax.device_get(self._likelihood_fn(params, padded,
                                                                             rng))
      bits.append(chunk_bits[:len(part)])
      logps.append(chunk_logp[:len(part)])
      steps.append(int(num_steps))
    bits, logps = np.concatenate(bits), np.concatenate(logps)
    metrics = {"bits_per_dim": float(bits.mean()), "nll_nats": float(-logps.mean()),
               "solver_steps": float(np.mean(steps))}
    if self.is_toy and toy2d.mixture(self.config.data.density) is not None:
      true_logp = jax.jit(toy2d.true_logp(self.config.data.density, self.sde))
      t = np.full((len(examples),), self.eps, np.float32)
      metrics["true_nll_nats"] = float(-np.mean(true_logp(examples, t)))
    return metrics

  # ----------------------------------------------------------------------------- sampling
  def pc_kwargs(self) -> dict:
    """The PC sampler's settings from config.sample (predictor, corrector, snr, steps)."""
    s = self.config.sample
    return dict(predictor=s.predictor, corrector=s.corrector, snr=s.snr,
                n_corrector_steps=s.n_corrector_steps)

  def generate(self, params, rng, num: int, *, num_snapshots: int = 0, labels=None,
               guidance_scale=None) -> samplers.Samples:
    """`num` PC samples (config.sample: num_steps, predictor, corrector, snr); with labels
    [num], class-conditional through the classifier's gradient times guidance_scale."""
    score_fn = self.score_pytree(params)
    if labels is not None:
      if self.classifier is None:
        raise UserError("class-conditional samples need config.sde.classifier=True")
      scale = self.config.sample.guidance_scale if guidance_scale is None else guidance_scale
      score_fn = controllable.conditional_score(
          score_fn, jax.tree_util.Partial(self._classifier_of, params), labels, scale)
    return samplers.pc_sampler(self.sde, score_fn, (num, *self.data_shape), rng,
                               self.config.sample.num_steps, num_snapshots=num_snapshots,
                               **self.pc_kwargs())

  def inpaint(self, params, images: np.ndarray, rng, per_image: int) -> np.ndarray:
    """[N, per_image, H, W, C] completions of the bottom half of each image, top half known."""
    height = self.data_shape[0]
    mask = (np.arange(height) < height // 2).astype(np.float32)[:, None, None]
    data = np.repeat(images, per_image, axis=0)
    result = controllable.inpainting_sampler(self.sde, self.score_pytree(params), data, mask,
                                             rng, self.config.sample.num_steps,
                                             **self.pc_kwargs())
    return np.asarray(result.x).reshape(len(images), per_image, *self.data_shape)

  def colorize(self, params, images: np.ndarray, rng) -> np.ndarray:
    """[N, H, W, 3] colourings keeping each image's grey levels (RGB data only)."""
    grey = np.repeat(images.mean(axis=-1, keepdims=True), 3, axis=-1)
    result = controllable.colorization_sampler(self.sde, self.score_pytree(params), grey, rng,
                                               self.config.sample.num_steps,
                                               **self.pc_kwargs())
    return np.asarray(result.x)

  def snapshot_times(self, num_snapshots: int) -> list[float]:
    """The time each trajectory snapshot was taken at (T first, 0 last)."""
    steps = self.config.sample.num_steps
    spacing = (self.sde.T - self.sde.eps) / max(steps - 1, 1)
    return [self.sde.T - i * spacing if i < steps else 0.0
            for i in (np.arange(num_snapshots) * steps // (num_snapshots - 1))]

  def sample(self, params, rng):
    """Pictures: samples, trajectory, inpainting / colourisation, class-conditional rows
    (images), or scatter plots (points)."""
    s = self.config.sample
    sample_rng, inpaint_rng, class_rng = jax.random.split(rng, 3)
    pictures = {}
    if s.num_samples > 0:
      result = self.generate(params, sample_rng, s.num_samples, num_snapshots=s.num_snapshots)
      samples = np.asarray(result.x)
      trajectory = None if result.trajectory is None else np.asarray(result.trajectory)
      pictures.update(self._sample_pictures(samples, trajectory))
    if self.use_classifier and s.per_class > 0:
      labels = np.repeat(np.arange(self.num_classes), s.per_class)
      conditional = np.asarray(self.generate(params, class_rng, len(labels),
                                             labels=labels).x)
      pictures["class_conditional"] = self._class_picture(conditional, labels)
    if not self.is_toy and s.inpaint_examples > 0:
      originals = self.test_x[:s.inpaint_examples]
      completions = self.inpaint(params, originals, inpaint_rng, s.inpaint_per_example)
      given = originals * (np.arange(self.data_shape[0]) < self.data_shape[0] // 2)[
          None, :, None, None]
      table = np.concatenate([originals[:, None], given[:, None], completions], axis=1)
      pictures["inpainting"] = self._tile(table)
      if self.data_shape[-1] == 3:
        coloured = self.colorize(params, originals, inpaint_rng)
        grey = np.repeat(originals.mean(-1, keepdims=True), 3, axis=-1)
        pictures["colorization"] = self._tile(np.stack([originals, grey, coloured], axis=1))
    return {"images": pictures}

  def _tile(self, table) -> np.ndarray:
    return image_grid.tile(table, scale=image_grid.default_scale(self.data_shape[0]))

  def _grid(self, images: np.ndarray) -> np.ndarray:
    """Images [N, ...] in rows of GRID_COLUMNS (the last row padded white)."""
    rows = math.ceil(len(images) / GRID_COLUMNS)
    padded = np.ones((rows * GRID_COLUMNS, *self.data_shape), np.float32)
    padded[:len(images)] = images
    return self._tile(padded.reshape(rows, GRID_COLUMNS, *self.data_shape))

  def _sample_pictures(self, samples, trajectory) -> dict:
    times = [] if trajectory is None else self.snapshot_times(len(trajectory))
    if self.is_toy:
      pictures = {"samples": scatter_plot.scatter_panels(
          [("test data", self.test_x, None), ("samples", samples, None)])}
      if trajectory is not None:
        pictures["trajectory"] = scatter_plot.scatter_panels(
            [(f"t={t:.3g}", snapshot, None) for t, snapshot in zip(times, trajectory)],
            limit=1.1 * float(np.max(np.abs(self.test_x))))
      return pictures
    pictures = {"samples": self._grid(samples)}
    if trajectory is not None:  # rows: the first few samples; columns: snapshots, T -> 0
      shown = min(4, trajectory.shape[1])
      pictures["trajectory"] = self._tile(np.swapaxes(trajectory[:, :shown], 0, 1))
    return pictures

  def _class_picture(self, samples, labels) -> np.ndarray:
    if self.is_toy:
      return scatter_plot.scatter_panels([("test data", self.test_x, self.test_labels),
                                          ("class-conditional", samples, labels)])
    per_class = self.config.sample.per_class
    return self._tile(samples.reshape(self.num_classes, per_class, *self.data_shape))

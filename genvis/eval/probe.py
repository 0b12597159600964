"""Linear probes: how linearly decodable are the classes from a model's features?

ImageGPT, MAE and CLIP all judge a representation the same way: freeze the model, take one
feature vector per image (the average over positions of one layer's hidden states), fit a
logistic-regression head on labelled training features and report test accuracy. This
module is that second half and is model-agnostic: it takes numpy features, never a model,
so raw pixels, every layer of every family and any other baseline go through the same code.
`average_pool` is the small shared piece of the model side.

Two regimes, because they answer different questions. The *full-label* probe uses every
training label; on the embedded digits (genvis/data/digits.py) it already reaches ~96 % on
raw pixels, so it barely separates good features from none. The *few-shot* probe uses
exactly k labels per class (k = 1, 5, 10), repeated over several seeded draws and reported
as mean ± std; raw pixels give ~53 / 83 / 88 %, which leaves room for features to help.
Each seed draws the same labelled images whatever the features (the draw depends only on
the labels), so raw pixels and every layer are compared on identical subsets.

Regularisation rule (the same for every feature set, so comparisons are fair):
  - features are standardised with the mean/std of the labelled training examples only
    (a StandardScaler inside the Pipeline; the test set never informs the probe);
  - multinomial logistic regression (lbfgs) minimising C * sum_i loss_i + ||w||^2 / 2 with
    a fixed C = 1.0 by default. Because the data term is a *sum* over examples, the prior
    automatically weighs more when there are fewer labels, which is what the few-shot regime
    needs, with no per-regime tuning and no held-out labels spent on it.
  - C="cv" instead picks C from CV_GRID by stratified k-fold cross-validation on the labelled
    set (folds = min(cv_folds, smallest class count)). With 1 label per class no fold split
    exists, so it falls back to CV_FALLBACK_C (= the default 1.0). It costs ~30x more fits
    (raw digits: 3.5 s instead of 0.2 s for full label + 30 few-shot fits), and on raw
    digits it did not beat C=1.0 (full 96.0 % both; 1/5/10-shot 53.4 / 81.1 / 87.6 % vs
    53.4 / 82.9 / 87.8 % with C=1), hence the fixed default.
  - one caveat of standardising by the labelled set: with 1 label per class the statistics
    come from 10 examples, so pure-noise dimensions are scaled up to the size of
    informative ones; that is part of the measured difficulty, equally for every feature set.

Speed: a fit on <= 1,352 examples of <= 256 dimensions takes milliseconds to ~0.3 s; a whole
`probe_by_layer` on the digits split (9 layers x (full label + 3 shot counts x 10 seeds))
took 1.8 s at 64 dims and 4.4 s at 256 dims on two shared CPU cores. Everything runs
single-threaded (n_jobs=1 and one BLAS thread, see `_single_threaded`) because those cores
are shared.
"""

import numbers
from typing import Sequence

import numpy as np

from genvis import atomic_files
from genvis.errors import UserError

DEFAULT_C = 1.0
CV_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
CV_FALLBACK_C = DEFAULT_C  # with 1 label per class there is nothing to cross-validate on
DEFAULT_SHOTS = (1, 5, 10)
DEFAULT_SEEDS = 10
MAX_ITER = 1000  # lbfgs on standardised features converges well before this


# ------------------------------------------------------------------------------ pooling
def average_pool(hidden, mask=None):
  """Mean over positions of hidden states: `[B, T, D] -> [B, D]` or `[L, B, T, D] -> [L, B, D]`.

  `mask` (`[B, T]`, true/1 = a real token) excludes padding from the mean; a row with no
  real token pools to zeros rather than NaN.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  hidden = jnp.asarray(hidden)
  if hidden.ndim not in (3, 4):
    raise UserError(f"average_pool: hidden has shape {tuple(hidden.shape)}; expected "
                    f"[batch, positions, dim] or [layers, batch, positions, dim]")
  if mask is None:
    return hidden.mean(axis=-2)
  mask = jnp.asarray(mask)
  if mask.shape != hidden.shape[-3:-1]:
    raise UserError(f"average_pool: mask has shape {tuple(mask.shape)} but hidden has shape "
                    f"{tuple(hidden.shape)}; expected mask [batch, positions] = "
                    f"{tuple(hidden.shape[-3:-1])}")
  weights = mask.astype(hidden.dtype)[..., None]  # [B, T, 1], broadcasts over a layer axis
  total = (hidden * weights).sum(axis=-2)
  count = jnp.maximum(weights.sum(axis=-2), 1)
  return total / count


# --------------------------------------------------------------------------- validation
def _check_features(name: str, x) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 2:
    raise UserError(f"probe: {name} has shape {x.shape}; expected [examples, dim]")
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    raise UserError(f"probe: {name} has dtype {x.dtype}; expected real numbers")
  bad = np.size(x) - np.count_nonzero(np.isfinite(x))
  if bad:
    raise UserError(f"probe: {name} (shape {x.shape}) holds {bad} NaN/inf values; "
                    f"features must be finite")
  return x


def _check_labels(name: str, y, num_examples: int, features_name: str,
                  features_shape) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim != 1 or len(y) != num_examples:
    raise UserError(f"probe: {name} has shape {y.shape} but {features_name} has shape "
                    f"{tuple(features_shape)}; expected labels [{num_examples}]")
  if not np.issubdtype(y.dtype, np.integer):
    raise UserError(f"probe: {name} has dtype {y.dtype}; expected integer class ids")
  return y


def _check_probe_inputs(train_x, train_y, test_x, test_y):
  train_x = _check_features("train_x", train_x)
  test_x = _check_features("test_x", test_x)
  if train_x.shape[1] != test_x.shape[1]:
    raise UserError(f"probe: train_x has shape {train_x.shape} but test_x has shape "
                    f"{test_x.shape}; the feature dims must match")
  train_y = _check_labels("train_y", train_y, len(train_x), "train_x", train_x.shape)
  test_y = _check_labels("test_y", test_y, len(test_x), "test_x", test_x.shape)
  if len(test_x) == 0:
    raise UserError("probe: test_x holds no examples")
  return train_x, train_y, test_x, test_y


def _check_seeds(seeds) -> list[int]:
  if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
    if seeds < 1:
      raise UserError(f"probe: seeds={seeds}; expected a positive count or a list of seeds")
    return list(range(int(seeds)))
  seeds = [int(s) for s in seeds]
  if not seeds:
    raise UserError("probe: seeds is empty; expected a positive count or a list of seeds")
  return seeds


def _check_shots(shots) -> list[int]:
  shots = [shots] if isinstance(shots, numbers.Integral) else list(shots)
  for k in shots:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
      raise UserError(f"probe: shots={shots}; expected positive ints (labels per class)")
  return [int(k) for k in shots]


# ------------------------------------------------------------------------------ fitting
_THREADPOOLS = []  # one threadpoolctl controller, made once the BLAS libraries are loaded


def _single_threaded():
  """A context that limits BLAS/OpenMP to one thread.

  The fits are tiny (2,570 weights for 256 dims x 10 classes), so threads only add
  synchronisation: on two shared cores, OpenBLAS's default 2 threads made a layer's 31 fits
  ~10x slower (7.9 s vs 0.7 s at 256 dims). The controller is built once (building one
  scans the loaded libraries, ~2 ms; entering its limit costs ~15 us).
  """
  if not _THREADPOOLS:
    import sklearn.linear_model  # pylint: disable=import-outside-toplevel,unused-import
    from threadpoolctl import ThreadpoolController  # pylint: disable=import-outside-toplevel
    _THREADPOOLS.append(ThreadpoolController())
  return _THREADPOOLS[0].limit(limits=1)


def _make_probe(labels: np.ndarray, C, max_iter: int, cv_folds: int):
  """The unfitted estimator for one labelled set: scaler + logistic regression (+ CV)."""
  # pylint: disable=import-outside-toplevel
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import GridSearchCV, StratifiedKFold
  from sklearn.pipeline import Pipeline
  from sklearn.preprocessing import StandardScaler
  # pylint: enable=import-outside-toplevel
  cross_validate = isinstance(C, str)
  if cross_validate and C != "cv":
    raise UserError(f"probe: C={C!r}; expected a positive number or 'cv'")
  if not cross_validate and not (isinstance(C, numbers.Real) and C > 0):
    raise UserError(f"probe: C={C!r}; expected a positive number or 'cv'")
  smallest_class = int(np.unique(labels, return_counts=True)[1].min())
  fixed_c = CV_FALLBACK_C if cross_validate else float(C)
  # solver="lbfgs" fits the multinomial (softmax) loss for >2 classes; n_jobs is not passed
  # because LogisticRegression ignores it since scikit-learn 1.8.
  pipeline = Pipeline([("scale", StandardScaler()),
                       ("logreg", LogisticRegression(C=fixed_c, solver="lbfgs",
                                                     max_iter=max_iter))])
  if not cross_validate or smallest_class < 2:
    return pipeline
  folds = StratifiedKFold(n_splits=min(cv_folds, smallest_class), shuffle=True, random_state=0)
  return GridSearchCV(pipeline, {"logreg__C": list(CV_GRID)}, cv=folds, n_jobs=1)


def probe_accuracy(train_x, train_y, test_x, test_y, *, C=DEFAULT_C, max_iter: int = MAX_ITER,
                   cv_folds: int = 5) -> float:
  """Test accuracy of a logistic-regression probe fitted on every training example.

  Args:
    train_x, test_x: features `[N, D]` and `[M, D]` (numpy or anything `np.asarray` takes).
    train_y, test_y: integer class ids `[N]` and `[M]`.
    C: inverse L2 strength (default 1.0, see the module docstring), or "cv" to pick it from
      CV_GRID by stratified k-fold CV on the training examples (1 per class: CV_FALLBACK_C).
    max_iter: lbfgs iteration cap.
    cv_folds: folds for C="cv" (capped by the smallest class count).

  Returns:
    The fraction of test examples whose predicted class is right, as a Python float.

  Raises:
    UserError: mismatched shapes (naming both), non-finite features, non-integer labels,
      fewer than 2 classes in the training labels, or a bad C.
  """
  train_x, train_y, test_x, test_y = _check_probe_inputs(train_x, train_y, test_x, test_y)
  classes = np.unique(train_y)
  if len(classes) < 2:
    raise UserError(f"probe: train_y holds {len(classes)} class(es) in {len(train_y)} examples; "
                    f"a classifier needs at least 2")
  probe = _make_probe(train_y, C, max_iter, cv_folds)
  with _single_threaded():
    probe.fit(train_x.astype(np.float64), train_y)
    predictions = probe.predict(test_x.astype(np.float64))
  return float(np.mean(predictions == test_y))


def few_shot_indices(labels, shots: int, seed: int) -> np.ndarray:
  """Indices of exactly `shots` examples of every class in `labels`, ascending.

  Deterministic for (labels, shots, seed): a `np.random.default_rng(seed)` draws, class by
  class in ascending class order, `shots` members without replacement. The draw sees only
  the labels, so every feature set of the same images gets the same subset.

  Raises:
    UserError: when `shots` < 1 or a class has fewer than `shots` examples (naming it).
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise UserError(f"few_shot_indices: labels has shape {labels.shape}; expected [examples]")
  if not isinstance(shots, numbers.Integral) or isinstance(shots, bool) or shots < 1:
    raise UserError(f"few_shot_indices: shots={shots!r}; expected a positive int")
  classes, counts = np.unique(labels, return_counts=True)
  if len(classes) and counts.min() < shots:
    scarce = classes[np.argmin(counts)]
    raise UserError(f"few_shot_indices: class {scarce} has {counts.min()} examples, fewer "
                    f"than shots={shots}")
  rng = np.random.default_rng(seed)
  chosen = [rng.choice(np.flatnonzero(labels == c), size=shots, replace=False) for c in classes]
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _summary(runs: Sequence[float]) -> dict:
  """mean and population std (ddof=0, so one seed gives std 0) of per-seed accuracies."""
  runs = [float(r) for r in runs]
  return {"mean": float(np.mean(runs)), "std": float(np.std(runs)), "runs": runs}


def few_shot_accuracy(train_x, train_y, test_x, test_y, shots=DEFAULT_SHOTS,
                      seeds=DEFAULT_SEEDS, **probe_options) -> dict:
  """Probe accuracy with `k` labels per class, for each k in `shots`, over `seeds` draws.

  Args:
    train_x, train_y, test_x, test_y: as `probe_accuracy`; the labelled subset is drawn from
      the training set, the whole test set is scored.
    shots: labels per class (an int or a sequence, default 1, 5, 10).
    seeds: a count n (seeds 0..n-1) or an explicit list of seeds.
    **probe_options: passed to `probe_accuracy` (C, max_iter, cv_folds).

  Returns:
    {k: {"mean": float, "std": float, "runs": [accuracy per seed]}} (std with ddof=0).
  """
  train_x, train_y, test_x, test_y = _check_probe_inputs(train_x, train_y, test_x, test_y)
  results = {}
  for k in _check_shots(shots):
    runs = []
    for seed in _check_seeds(seeds):
      rows = few_shot_indices(train_y, k, seed)
      runs.append(probe_accuracy(train_x[rows], train_y[rows], test_x, test_y, **probe_options))
    results[k] = _summary(runs)
  return results


def probe_features(train_x, train_y, test_x, test_y, shots=DEFAULT_SHOTS, seeds=DEFAULT_SEEDS,
                   full_label: bool = True, **probe_options) -> dict:
  """Full-label and few-shot results for one feature set (e.g. raw pixels, the baseline).

  Returns {"full": accuracy or None, "few_shot": few_shot_accuracy(...)}, the per-layer
  entry format of `probe_by_layer` and the `baseline` format of `plot_probe_by_layer`.
  """
  full = (probe_accuracy(train_x, train_y, test_x, test_y, **probe_options)
          if full_label else None)
  few = (few_shot_accuracy(train_x, train_y, test_x, test_y, shots, seeds, **probe_options)
         if _check_shots(shots) else {})
  return {"full": full, "few_shot": few}


def _as_layers(name: str, feats) -> list:
  if isinstance(feats, (list, tuple)):
    return list(feats)
  feats = np.asarray(feats)
  if feats.ndim != 3:
    raise UserError(f"probe_by_layer: {name} has shape {feats.shape}; expected "
                    f"[layers, examples, dim] or a list of [examples, dim]")
  return list(feats)


def probe_by_layer(train_feats, train_y, test_feats, test_y, shots=DEFAULT_SHOTS,
                   seeds=DEFAULT_SEEDS, full_label: bool = True, **probe_options) -> dict:
  """Probe every layer's features: accuracy as a function of depth.

  Args:
    train_feats, test_feats: `[L, N, D]` / `[L, M, D]` arrays, or lists of L `[N, D_l]` /
      `[M, D_l]` arrays (dims may differ per layer). Layer i is the i-th entry.
    train_y, test_y, shots, seeds, **probe_options: as `few_shot_accuracy`.
    full_label: also fit the full-label probe per layer.

  Returns:
    {"layers": [probe_features(...) for each layer], "shots": [...], "seeds": [...],
     "probe_options": the options passed (empty: the defaults, C=1.0)}.
  """
  train_layers = _as_layers("train_feats", train_feats)
  test_layers = _as_layers("test_feats", test_feats)
  if len(train_layers) != len(test_layers) or not train_layers:
    raise UserError(f"probe_by_layer: train_feats has {len(train_layers)} layers but "
                    f"test_feats has {len(test_layers)}; expected the same, at least one")
  shots, seeds = _check_shots(shots), _check_seeds(seeds)
  layers = []
  for index, (train_x, test_x) in enumerate(zip(train_layers, test_layers)):
    try:
      layers.append(probe_features(train_x, train_y, test_x, test_y, shots, seeds,
                                   full_label, **probe_options))
    except UserError as e:
      raise UserError(f"layer {index}: {e}") from None
  return {"layers": layers, "shots": shots, "seeds": seeds,
          "probe_options": dict(probe_options)}


def _shot_entry(few_shot: dict, k):
  """few_shot[k] for k an int or its string (JSON turns int keys into strings); None if
  absent."""
  for candidate in (k, str(k)) + ((int(k),) if str(k).isdigit() else ()):
    if candidate in few_shot:
      return few_shot[candidate]
  return None


def _layer_score(entry: dict, key) -> float:
  if key == "full":
    return entry["full"]
  return _shot_entry(entry["few_shot"], key)["mean"]


def best_layer(results: dict, key="full") -> int:
  """Index (from 0) into results["layers"] of the layer with the highest accuracy for `key`:
  "full" or a shot count k (few-shot mean). Ties go to the shallowest layer."""
  layers = results["layers"]
  try:
    scores = [_layer_score(entry, key) for entry in layers]
  except (KeyError, TypeError):
    available = ["full"] + sorted(layers[0]["few_shot"]) if layers else []
    raise UserError(f"best_layer: key={key!r} not in the results; expected one of "
                    f"{available}") from None
  if any(s is None for s in scores):
    raise UserError(f"best_layer: key={key!r} was not computed (full_label=False?)")
  return int(np.argmax(scores))


# ----------------------------------------------------------------------------- plotting
def plot_probe_by_layer(results: dict, path: str, baseline: dict | None = None,
                        baseline_name: str = "baseline",
                        title: str = "linear probe accuracy by layer"):
  """Accuracy (%) against layer for the full-label probe and each shot count (mean ± std
  error bars), with `baseline` (a `probe_features` result, e.g. raw pixels, named
  `baseline_name` in the legend) as horizontal dashed lines in the same colours. Written
  atomically as a PNG to `path`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  layers = results["layers"]
  depth = np.arange(1, len(layers) + 1)  # layer 1 is the first block's output
  series = []  # (label, means, stds, baseline mean or None)
  if layers and all(entry["full"] is not None for entry in layers):
    series.append(("full label", [e["full"] for e in layers], None,
                   baseline.get("full") if baseline else None))
  for k in results.get("shots", []):
    means = [_layer_score(e, k) for e in layers]
    stds = [_shot_entry(e["few_shot"], k)["std"] for e in layers]
    base_entry = _shot_entry(baseline.get("few_shot", {}), k) if baseline else None
    base = base_entry["mean"] if base_entry else None
    series.append((f"{k} per class", means, stds, base))
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for index, (label, means, stds, base) in enumerate(series):
    color = f"C{index}"
    yerr = None if stds is None else 100 * np.asarray(stds)
    ax.errorbar(depth, 100 * np.asarray(means), yerr=yerr, marker="o", capsize=3,
                color=color, label=label)
    if base is not None:
      ax.axhline(100 * base, color=color, linestyle="--", linewidth=1)
  if baseline:
    ax.plot([], [], color="gray", linestyle="--", label=f"{baseline_name} (dashed)")
  ax.set_xlabel("layer")
  ax.set_ylabel("test accuracy (%)")
  ax.set_xticks(depth)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title)
  fig.tight_layout()
  with atomic_files.replacing(path) as temporary:
    fig.savefig(temporary, format="png")
  plt.close(fig)


def format_probe_results(results: dict, baseline: dict | None = None) -> str:
  """A layer x (full, k-shot) table in %, few-shot as mean±std; baseline as the first row.
  Layers are numbered from 1, as in the plot (entry i of the results is layer i + 1)."""
  shots = results.get("shots", [])
  header = f"{'layer':<10}{'full':>8}" + "".join(f"{f'{k}-shot':>14}" for k in shots)
  rows = [("baseline", baseline)] if baseline else []
  rows += [(str(i), entry) for i, entry in enumerate(results["layers"], start=1)]
  lines = [header]
  for name, entry in rows:
    full = f"{100 * entry['full']:>8.1f}" if entry.get("full") is not None else f"{'-':>8}"
    cells = []
    for k in shots:
      few = _shot_entry(entry["few_shot"], k)
      cells.append(f"{100 * few['mean']:>8.1f}±{100 * few['std']:<4.1f}" if few else f"{'-':>14}")
    lines.append(f"{name:<10}{full}" + "".join(cells))
  return "\n".join(lines) + "\n(test accuracy in %)"

"""2-D toy densities for diffusion: points whose true density (and score) is known or easy
to picture.

A score model that works on images may still drop a mode or blur a ridge; on the plane that
shows at a glance in a scatter plot, and for a Gaussian mixture the answer is exact: every
p_t of a linear SDE is again a mixture (genvis/diffusion/gaussian.py), so the true
log-density and score are closed forms a trained model and its likelihood are held against.

Densities (`DENSITIES`; each point carries a label, the part of the density it came from, so
a noise-conditional classifier can be trained on it):
- "gmm": 8 Gaussians (std 0.1) evenly on a circle of radius 2, equal weights; label = mode;
- "grid": 25 Gaussians (std 0.05) on the 5x5 grid {-2, -1, 0, 1, 2}^2; label = mode;
- "gaussian": one correlated Gaussian, mean (0.5, -0.5), cov [[1, 0.8], [0.8, 1]]; label 0;
- "moons": two interleaved half circles (radius 1, the second shifted by (1, -0.5), centred
  and scaled by 1.5), plus N(0, 0.05^2) noise; label = moon;
- "checkerboard": uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2; label = square.
The first three are Gaussian mixtures (`mixture(name)`), with exact log p_t and score.

Determinism: point i of a split is made from four uniforms hashed from (seed, split, i), so
a training batch (indices step * B .. step * B + B - 1) is a pure function of (seed, step),
the same on every process and after a resume, and the test set (split "test", indices
0..N-1) never shares a hash input with training. Drawing is plain vectorised numpy: nothing
to compile, ~0.1 ms for a batch of 512.
"""

import dataclasses
import math

import numpy as np

from genvis.data.batching import process_rows
from genvis.diffusion import gaussian
from genvis.diffusion.sde import SDE
from genvis.errors import UserError

SPLITS = {"train": 0, "test": 1}
DATA_DIM = 2


@dataclasses.dataclass(frozen=True)
class Mixture:
  """sum_k weights[k] N(means[k], covs[k]) in the plane."""
  weights: np.ndarray  # [K], sums to 1
  means: np.ndarray    # [K, 2]
  covs: np.ndarray     # [K, 2, 2]

  @property
  def num_components(self) -> int:
    return len(self.weights)


def _isotropic(means, std) -> Mixture:
  means = np.asarray(means, np.float32)
  covs = np.broadcast_to(np.eye(DATA_DIM, dtype=np.float32) * std**2,
                         (len(means), DATA_DIM, DATA_DIM)).copy()
  return Mixture(np.full(len(means), 1.0 / len(means), np.float32), means, covs)


def _circle(num_modes=8, radius=2.0):
  angles = 2 * np.pi * np.arange(num_modes) / num_modes
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


_GRID = np.stack(np.meshgrid(np.arange(-2.0, 3.0), np.arange(-2.0, 3.0), indexing="ij"),
                 axis=-1).reshape(-1, 2)
MIXTURES = {
    "gmm": _isotropic(_circle(), 0.1),
    "grid": _isotropic(_GRID, 0.05),
    "gaussian": Mixture(np.ones(1, np.float32), np.array([[0.5, -0.5]], np.float32),
                        np.array([[[1.0, 0.8], [0.8, 1.0]]], np.float32)),
}
MOONS_NOISE = 0.05
MOONS_SCALE = 1.5
CHECKERBOARD_SQUARES = np.array([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0],
                                np.float32)  # lower-left corners in board units 0..3
NUM_CLASSES = {"gmm": 8, "grid": 25, "gaussian": 1, "moons": 2,
               "checkerboard": len(CHECKERBOARD_SQUARES)}
DENSITIES = tuple(NUM_CLASSES)


def check_density(name: str, key: str = "config.data.density") -> str:
  if name not in NUM_CLASSES:
    raise UserError(f"{key}={name!r}: expected one of {', '.join(DENSITIES)}")
  return name


def mixture(name: str) -> Mixture | None:
  """The density as a Gaussian mixture, or None when it is not one (moons, checkerboard)."""
  return MIXTURES.get(check_density(name))


# ----------------------------------------------------------------------------- drawing
# A counter-based generator: uniform j of point i is a hash of (seed, split, i, j)
# (SplitMix64's finaliser, Steele et al. 2014), so any slice of the stream is drawn directly,
# vectorised in numpy, with nothing to compile and no generator state.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
UNIFORMS_PER_POINT = 4


def _mix(z: np.ndarray) -> np.ndarray:
  """SplitMix64's finaliser: a bijection of uint64 whose output bits all depend on every
  input bit (uint64 arithmetic wraps around, as intended)."""
  z = (z ^ (z >> np.uint64(30))) * _MIX_1
  z = (z ^ (z >> np.uint64(27))) * _MIX_2
  return z ^ (z >> np.uint64(31))


def _uniforms(seed: int, split: int, indices: np.ndarray) -> np.ndarray:
  """[N, UNIFORMS_PER_POINT] float64 in (0, 1), a pure function of (seed, split, index)."""
  with np.errstate(over="ignore"):
    stream = _mix(_mix(np.uint64(seed) * _GOLDEN + np.uint64(split)) + _GOLDEN)
    counters = (indices.astype(np.uint64)[:, None] * np.uint64(UNIFORMS_PER_POINT)
                + np.arange(UNIFORMS_PER_POINT, dtype=np.uint64)[None, :])
    bits = _mix(_mix(counters ^ stream) + stream)
  return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _normals(u_a: np.ndarray, u_b: np.ndarray) -> np.ndarray:
  """[N, 2] independent standard normals from two uniforms (Box-Muller)."""
  radius = np.sqrt(-2.0 * np.log(u_a))
  return np.stack([radius * np.cos(2 * np.pi * u_b), radius * np.sin(2 * np.pi * u_b)], 1)


def _draw(name: str, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(points [N, 2], labels [N]) from uniforms u [N, 4]: u[:, 0] picks the part (mode, moon,
  square), the others place the point within it."""
  if name in MIXTURES:
    mix = MIXTURES[name]
    cumulative = np.cumsum(mix.weights.astype(np.float64))
    labels = np.minimum(np.searchsorted(cumulative / cumulative[-1], u[:, 0], side="right"),
                        mix.num_components - 1)
    chol = np.linalg.cholesky(mix.covs.astype(np.float64))[labels]
    points = mix.means[labels] + np.einsum("nij,nj->ni", chol, _normals(u[:, 1], u[:, 2]))
  elif name == "moons":
    labels = (u[:, 0] < 0.5).astype(np.int64)
    angle = np.pi * u[:, 1]
    upper = np.stack([np.cos(angle), np.sin(angle)], 1)
    lower = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], 1)
    centred = np.where(labels[:, None] == 0, upper, lower) - [0.5, 0.25]
    points = MOONS_SCALE * centred + MOONS_NOISE * _normals(u[:, 2], u[:, 3])
  else:  # checkerboard
    labels = np.minimum((u[:, 0] * len(CHECKERBOARD_SQUARES)).astype(np.int64),
                        len(CHECKERBOARD_SQUARES) - 1)
    points = CHECKERBOARD_SQUARES[labels] - 2.0 + u[:, 1:3]
  return points.astype(np.float32), labels.astype(np.int32)


def sample_points(name: str, seed: int, indices, split: str = "train"):
  """(points float32 [N, 2], labels int32 [N]) of the given indices of a split: point i is a
  pure function of (name, seed, split, i)."""
  check_density(name)
  if split not in SPLITS:
    raise UserError(f"toy2d split {split!r}: expected one of {', '.join(SPLITS)}")
  indices = np.asarray(indices)
  if indices.ndim != 1 or (indices.size and indices.min() < 0):
    raise UserError(f"toy2d indices must be non-negative integers [N], got {indices.shape}")
  return _draw(name, _uniforms(seed, SPLITS[split], indices))


# ----------------------------------------------------------------------------- exact answers
def true_logp(name: str, sde: SDE):
  """fn(x [B, 2], t [B]) -> log p_t(x) [B] of a mixture density under `sde` (t = 0 is the
  data density itself for VP and sub-VP; VE's p_0 is blurred by sigma_min, see sde.py)."""
  mix = mixture(name)
  if mix is None:
    raise UserError(f"toy density {name!r} has no closed-form density; exact answers exist "
                    f"for {', '.join(MIXTURES)}")
  return gaussian.gaussian_mixture_logp(sde, mix.weights, mix.means, mix.covs)


def true_score(name: str, sde: SDE):
  """fn(x [B, 2], t [B]) -> grad_x log p_t(x) [B, 2] of a mixture density under `sde`."""
  mix = mixture(name)
  if mix is None:
    raise UserError(f"toy density {name!r} has no closed-form score; exact answers exist "
                    f"for {', '.join(MIXTURES)}")
  return gaussian.gaussian_mixture_score(sde, mix.weights, mix.means, mix.covs)


# ----------------------------------------------------------------------------- batches
class Toy2DBatches:
  """Training batches (an endless stream) and a fixed test set of one toy density, in the
  same form as ImageBatches: {"x": [B, 2], "labels": [B], "weights": [B]}."""

  def __init__(self, data_config, seed: int, *, process_index: int = 0,
               process_count: int = 1):
    self.density = check_density(data_config.density)
    self.seed = seed
    self.global_batch = data_config.batch_size
    if data_config.test_size < 1:
      raise UserError(f"config.data.test_size={data_config.test_size}: the toy test set "
                      "needs at least one point")
    self.rows = process_rows(self.global_batch, process_index, process_count)
    self.num_classes = NUM_CLASSES[self.density]
    # The test set belongs to the density, not the run: seeded by data.dataset_seed.
    self.test_points, self.test_labels = sample_points(
        self.density, data_config.dataset_seed, np.arange(data_config.test_size), "test")
    self.data_shape = (DATA_DIM,)

  def train_batch(self, step: int) -> dict:
    indices = step * self.global_batch + np.arange(self.global_batch)[self.rows]
    points, labels = sample_points(self.density, self.seed, indices, "train")
    return {"x": points, "labels": labels, "weights": np.ones(len(indices), np.float32)}

  def eval_batches(self, limit: int):
    """(index, batch) over the test set (limit < 0: all of it); padding rows weigh 0."""
    count = math.ceil(len(self.test_points) / self.global_batch)
    for index in range(count if limit < 0 else min(limit, count)):
      positions = index * self.global_batch + np.arange(self.global_batch)
      real = positions < len(self.test_points)
      rows = np.where(real, positions, 0)[self.rows]
      yield index, {"x": self.test_points[rows], "labels": self.test_labels[rows],
                    "weights": real[self.rows].astype(np.float32)}

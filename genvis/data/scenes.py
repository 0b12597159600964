"""Procedural scenes: coloured shapes on a black canvas, with captions and attribute labels.

Why it exists: the image–text families (ImageGPT's class-conditional probes, CLIP's zero-shot
and compositional tests, text-to-image diffusion) need paired images and captions that are
offline, cheap at any resolution, and whose ground truth is known exactly. A scene is 1-3
objects, each with four discrete attributes:

- shape: circle, square, triangle, diamond;
- colour: a small named RGB set (`COLOURS`);
- size: small or large;
- position: one of nine named regions of a 3x3 grid ("top left" ... "center" ... "bottom
  right"). Objects of one scene sit in distinct regions, so they never fully overlap and a
  position word names one object.

Held out: the (colour, shape) pairs in `HELDOUT_COMBINATIONS` never appear in the "train"
split, and every image of the "heldout" split contains at least one of them. Each held-out
colour and shape still appears in training in other pairs, so a model that recognises "red"
and "triangle" separately but has never seen a red triangle is tested on composing them.

Determinism: image `index` of `(seed, split)` is drawn from its own random stream
(`np.random.SeedSequence([seed, split, index])`), so it does not depend on how many images
are made or in which batch; `make_scenes(..., start=k)` continues a sequence, which is what a
`(seed, step)` batch needs. The scene and its caption come from two child streams, so the
caption phrasing can change without moving any object.

Rendering is numpy: each object's coverage is computed on a supersampled grid (4x4 samples per
pixel by default) over the object's bounding box only, then alpha-composited, so edges are
anti-aliased at 16-64 px and a thousand 32-px images take well under a second.
"""

import dataclasses

import numpy as np

from genvis.errors import UserError

SHAPES = ("circle", "square", "triangle", "diamond")

# Saturated and far apart in hue, so they stay distinguishable when a shape is a few pixels.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 50),
    "purple": (160, 70, 210),
    "orange": (245, 140, 30),
}
COLOUR_NAMES = tuple(COLOURS)
BACKGROUND = (0, 0, 0)

SIZES = ("small", "large")
# Radius (fraction of the image side) drawn uniformly in this range for each size.
_RADIUS_RANGE = {"small": (0.075, 0.09), "large": (0.13, 0.145)}
# The centre moves at most this far (fraction of the side) from its region's centre: with the
# largest radius a shape stays inside the image and never reaches a neighbour's centre.
_JITTER = 0.02

POSITIONS = ("top left", "top", "top right",
             "left", "center", "right",
             "bottom left", "bottom", "bottom right")
_POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}

# One per shape and one per colour, so each held-out pair's attributes are seen in training.
HELDOUT_COMBINATIONS = frozenset({
    ("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "diamond")})

SPLITS = ("train", "heldout")
MAX_OBJECTS = 3
_MIN_RESOLUTION, _MAX_RESOLUTION = 8, 1024

_ALL_PAIRS = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)
_TRAIN_PAIRS = tuple(p for p in _ALL_PAIRS if p not in HELDOUT_COMBINATIONS)
_HELDOUT_PAIRS = tuple(sorted(HELDOUT_COMBINATIONS))

_SINGLE_TEMPLATES = ("{objects}", "a picture of {objects}", "an image of {objects}",
                     "{objects} on a black background")
_MULTI_TEMPLATES = ("{objects}", "a picture of {objects}", "an image of {objects}",
                    "{count} shapes: {objects}")
_COUNT_WORDS = {2: "two", 3: "three"}


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One shape: its discrete attributes and where exactly it is drawn.

  Attributes:
    shape: one of `SHAPES`.
    colour: one of `COLOUR_NAMES`.
    size: one of `SIZES`.
    position: one of `POSITIONS` (the 3x3 region that holds `center`).
    center: (x, y) as fractions of the image side, x rightwards and y downwards.
    radius: the shape's half-extent as a fraction of the side (a circle's radius; other
      shapes are scaled to a similar area).
  """

  shape: str
  colour: str
  size: str
  position: str
  center: tuple[float, float]
  radius: float

  def __post_init__(self):
    for name, value, allowed in (("shape", self.shape, SHAPES),
                                 ("colour", self.colour, COLOUR_NAMES),
                                 ("size", self.size, SIZES),
                                 ("position", self.position, POSITIONS)):
      if value not in allowed:
        raise UserError(f"SceneObject.{name}={value!r}: expected one of {list(allowed)}")
    if not 0 < self.radius < 0.5:
      raise UserError(f"SceneObject.radius={self.radius!r}: expected a fraction in (0, 0.5)")


@dataclasses.dataclass(frozen=True)
class Scene:
  """The objects of one image, painted in order (a later one covers an earlier one)."""

  objects: tuple[SceneObject, ...]


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
  """`value` as an int in [low, high], or a one-line UserError naming `name`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise UserError(f"{name}={value!r}: expected an integer")
  if value < low or (high is not None and value > high):
    bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
    raise UserError(f"{name}={value!r}: expected an integer {bound}")
  return int(value)


def _check_split(split) -> int:
  if split not in SPLITS:
    raise UserError(f"split={split!r}: expected one of {list(SPLITS)}")
  return SPLITS.index(split)


def position_center(position: str) -> tuple[float, float]:
  """The centre (x, y), as fractions of the side, of a named 3x3 region."""
  row, col = divmod(POSITIONS.index(position), 3)
  return ((col + 0.5) / 3, (row + 0.5) / 3)


def _image_rngs(seed: int, split_index: int, index: int):
  """(scene rng, caption rng): two independent streams owned by image `index` alone."""
  scene_seq, caption_seq = np.random.SeedSequence([seed, split_index, index]).spawn(2)
  return np.random.default_rng(scene_seq), np.random.default_rng(caption_seq)


def sample_scene(rng: np.random.Generator, split: str = "train",
                 max_objects: int = MAX_OBJECTS) -> Scene:
  """A random scene of 1..max_objects objects in distinct regions.

  Args:
    rng: the random stream to draw from.
    split: "train" (no pair in `HELDOUT_COMBINATIONS`) or "heldout" (one object, at a random
      place in the order, has a held-out pair; the others any pair).
    max_objects: the most objects a scene holds (1..3); the count is uniform in 1..max.

  Returns:
    The scene.
  """
  split_index = _check_split(split)
  max_objects = _check_int("max_objects", max_objects, 1, MAX_OBJECTS)
  num_objects = int(rng.integers(1, max_objects + 1))
  # Sampling regions without replacement is the rejection rule "no two objects share a
  # region" done in one draw; with _JITTER and the radii no shape reaches another's centre.
  regions = rng.choice(len(POSITIONS), size=num_objects, replace=False)
  heldout_slot = int(rng.integers(num_objects)) if split_index == 1 else -1
  objects = []
  for slot, region in enumerate(regions):
    if slot == heldout_slot:
      pairs = _HELDOUT_PAIRS
    else:
      pairs = _TRAIN_PAIRS if split_index == 0 else _ALL_PAIRS
    colour, shape = pairs[int(rng.integers(len(pairs)))]
    size = SIZES[int(rng.integers(len(SIZES)))]
    position = POSITIONS[int(region)]
    base_x, base_y = position_center(position)
    dx, dy = rng.uniform(-_JITTER, _JITTER, size=2)
    radius = float(rng.uniform(*_RADIUS_RANGE[size]))
    objects.append(SceneObject(shape=shape, colour=colour, size=size, position=position,
                               center=(base_x + float(dx), base_y + float(dy)),
                               radius=radius))
  return Scene(objects=tuple(objects))


def scene_at(seed: int, index: int, split: str = "train",
             max_objects: int = MAX_OBJECTS) -> Scene:
  """Scene `index` of the sequence `(seed, split)`: the one `make_scenes` renders there."""
  seed = _check_int("seed", seed, 0)
  index = _check_int("index", index, 0)
  scene_rng, _ = _image_rngs(seed, _check_split(split), index)
  return sample_scene(scene_rng, split, max_objects)


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
  """Whether points at offsets (dx, dy) from the centre (y downwards) lie in the shape.

  The non-circle shapes are scaled to about the circle's area, so "small" and "large" mean
  the same amount of paint for every shape.
  """
  if shape == "circle":
    return dx * dx + dy * dy <= radius * radius
  if shape == "square":
    half = 0.9 * radius
    return (np.abs(dx) <= half) & (np.abs(dy) <= half)
  if shape == "diamond":
    return np.abs(dx) + np.abs(dy) <= 1.25 * radius
  # Triangle, apex up, its bounding box centred on the centre: circumradius 1.2 r gives
  # height 1.8 r and width 2.08 r. Inside: above the base and within the two slanted sides.
  circumradius = 1.2 * radius
  height, half_width = 1.5 * circumradius, 0.5 * np.sqrt(3.0) * circumradius
  return (dy <= height / 2) & (np.abs(dx) * height <= half_width * (dy + height / 2))


def _extent(shape: str, radius: float) -> float:
  """A half-width of a box around the centre that holds the whole shape."""
  return {"circle": 1.0, "square": 0.9, "diamond": 1.25, "triangle": 1.04}[shape] * radius


def _coverage(obj: SceneObject, resolution: int, supersample: int):
  """The fraction of each pixel the object covers, over its bounding box.

  Returns:
    (row slice, column slice, coverage [rows, cols] float32), or None when the box is empty.
  """
  cx, cy = obj.center[0] * resolution, obj.center[1] * resolution
  radius = obj.radius * resolution
  reach = _extent(obj.shape, radius)
  x0, x1 = max(0, int(np.floor(cx - reach))), min(resolution, int(np.ceil(cx + reach)))
  y0, y1 = max(0, int(np.floor(cy - reach))), min(resolution, int(np.ceil(cy + reach)))
  if x0 >= x1 or y0 >= y1:
    return None
  offsets = (np.arange(supersample) + 0.5) / supersample
  xs = (np.arange(x0, x1)[:, None] + offsets).reshape(-1) - cx
  ys = (np.arange(y0, y1)[:, None] + offsets).reshape(-1) - cy
  inside = _inside(obj.shape, xs[None, :], ys[:, None], radius)
  coverage = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
  return slice(y0, y1), slice(x0, x1), coverage.astype(np.float32)


def render(scene: Scene, resolution: int, supersample: int = 4) -> np.ndarray:
  """The scene as an image.

  Args:
    scene: the objects to paint, in order.
    resolution: the image side in pixels (8..1024).
    supersample: samples per pixel along each axis (1..16) for anti-aliased edges.

  Returns:
    float32 [resolution, resolution, 3] in [-1, 1] (a channel value v in 0..255 maps to
    v / 127.5 - 1); a pixel fully inside a shape is exactly its colour.
  """
  resolution = _check_int("resolution", resolution, _MIN_RESOLUTION, _MAX_RESOLUTION)
  supersample = _check_int("supersample", supersample, 1, 16)
  image = np.empty((resolution, resolution, 3), np.float32)
  image[...] = np.asarray(BACKGROUND, np.float32) / 127.5 - 1
  for obj in scene.objects:
    covered = _coverage(obj, resolution, supersample)
    if covered is None:
      continue
    rows, cols, alpha = covered
    colour = np.asarray(COLOURS[obj.colour], np.float32) / 127.5 - 1
    alpha = alpha[..., None]
    patch = image[rows, cols]
    # Where alpha is exactly 1 the result is exactly `colour` (no rounding drift).
    image[rows, cols] = np.where(alpha == 1, colour, patch * (1 - alpha) + colour * alpha)
  return image


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: SceneObject, with_size: bool = False,
                  with_position: bool = False) -> str:
  """A noun phrase for one object, e.g. "a small red circle at the top left"."""
  words = ([obj.size] if with_size else []) + [obj.colour, obj.shape]
  phrase = f"{_article(words[0])} {' '.join(words)}"
  return f"{phrase} {_POSITION_PHRASES[obj.position]}" if with_position else phrase


def caption(scene: Scene, rng: np.random.Generator) -> str:
  """A caption naming every object's colour and shape, in the scene's order.

  The phrasing is drawn from `rng`: with or without size words, with or without position
  words (one choice for the whole caption), objects joined by "and" (or "x, y and z"), and one
  of a few framings ("a picture of ...", "two shapes: ..."). Same rng state, same caption.

  Args:
    scene: the scene to describe (at least one object).
    rng: the random stream that picks the phrasing.

  Returns:
    The caption, lower case, without a final full stop.
  """
  if not scene.objects:
    raise UserError("scene.objects is empty: a caption needs at least one object")
  with_size, with_position = (bool(b) for b in rng.integers(2, size=2))
  phrases = [object_phrase(o, with_size, with_position) for o in scene.objects]
  if len(phrases) == 1:
    joined, templates = phrases[0], _SINGLE_TEMPLATES
  else:
    joined = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    templates = _MULTI_TEMPLATES
  template = templates[int(rng.integers(len(templates)))]
  return template.format(objects=joined, count=_COUNT_WORDS.get(len(phrases), len(phrases)))


def scene_labels(scene: Scene, max_objects: int = MAX_OBJECTS) -> dict[str, np.ndarray]:
  """Integer labels of one scene: per-object attribute indices (-1 past its last object)."""
  labels = {name: np.full((max_objects,), -1, np.int32)
            for name in ("shape", "colour", "size", "position")}
  for slot, obj in enumerate(scene.objects):
    labels["shape"][slot] = SHAPES.index(obj.shape)
    labels["colour"][slot] = COLOUR_NAMES.index(obj.colour)
    labels["size"][slot] = SIZES.index(obj.size)
    labels["position"][slot] = POSITIONS.index(obj.position)
  labels["num_objects"] = np.int32(len(scene.objects))
  return labels


def make_scenes(num: int, seed: int, split: str = "train", resolution: int = 32,
                max_objects: int = MAX_OBJECTS, start: int = 0,
                supersample: int = 4) -> dict:
  """Images `start .. start + num - 1` of the sequence `(seed, split)`, with captions and labels.

  Args:
    num: how many images (>= 0).
    seed: the dataset seed (>= 0).
    split: "train" or "heldout" (see `HELDOUT_COMBINATIONS`).
    resolution: the image side in pixels (8..1024).
    max_objects: the most objects per image (1..3).
    start: the index of the first image, so batches of one sequence can be made separately.
    supersample: samples per pixel along each axis, for anti-aliasing (1..16).

  Returns:
    A dict with "images" (float32 [num, resolution, resolution, 3] in [-1, 1]), "captions"
    (list of num str) and "labels": int32 arrays "shape", "colour", "size", "position" of
    shape [num, max_objects] (indices into `SHAPES`, `COLOUR_NAMES`, `SIZES`, `POSITIONS`;
    -1 where an image has fewer objects; column 0 is the first object, the one a caption
    names first) and "num_objects" [num].
  """
  num = _check_int("num", num, 0)
  seed = _check_int("seed", seed, 0)
  split_index = _check_split(split)
  resolution = _check_int("resolution", resolution, _MIN_RESOLUTION, _MAX_RESOLUTION)
  max_objects = _check_int("max_objects", max_objects, 1, MAX_OBJECTS)
  start = _check_int("start", start, 0)
  supersample = _check_int("supersample", supersample, 1, 16)
  images = np.empty((num, resolution, resolution, 3), np.float32)
  captions = []
  per_image = []
  for i in range(num):
    scene_rng, caption_rng = _image_rngs(seed, split_index, start + i)
    scene = sample_scene(scene_rng, split, max_objects)
    images[i] = render(scene, resolution, supersample)
    captions.append(caption(scene, caption_rng))
    per_image.append(scene_labels(scene, max_objects))
  names = ("shape", "colour", "size", "position", "num_objects")
  labels = {name: (np.stack([p[name] for p in per_image]) if per_image
                   else np.zeros((0, max_objects) if name != "num_objects" else (0,), np.int32))
            for name in names}
  return {"images": images, "captions": captions, "labels": labels}

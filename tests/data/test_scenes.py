"""The procedural scenes dataset: determinism, image format, held-out pairs, captions, speed."""

import re
import time

import numpy as np
import pytest

from genvis.data import scenes
from genvis.errors import UserError


def _pairs(labels):
  """The set of (colour, shape) names over every object of every image."""
  present = labels["shape"] >= 0
  return {(scenes.COLOUR_NAMES[c], scenes.SHAPES[s])
          for c, s in zip(labels["colour"][present], labels["shape"][present])}


def test_same_seed_same_data_and_other_seed_differs():
  a = scenes.make_scenes(20, seed=3, resolution=16)
  b = scenes.make_scenes(20, seed=3, resolution=16)
  c = scenes.make_scenes(20, seed=4, resolution=16)
  np.testing.assert_array_equal(a["images"], b["images"])
  assert a["captions"] == b["captions"]
  for name in a["labels"]:
    np.testing.assert_array_equal(a["labels"][name], b["labels"][name])
  assert not np.array_equal(a["images"], c["images"])
  assert a["captions"] != c["captions"]


def test_image_i_does_not_depend_on_num_or_batching():
  many = scenes.make_scenes(30, seed=7, resolution=16)
  few = scenes.make_scenes(5, seed=7, resolution=16)
  later = scenes.make_scenes(10, seed=7, resolution=16, start=20)
  np.testing.assert_array_equal(many["images"][:5], few["images"])
  assert many["captions"][:5] == few["captions"]
  np.testing.assert_array_equal(many["images"][20:], later["images"])
  assert many["captions"][20:] == later["captions"]
  np.testing.assert_array_equal(many["labels"]["shape"][20:], later["labels"]["shape"])
  # scene_at gives the very scene make_scenes rendered at that index.
  np.testing.assert_array_equal(many["images"][12],
                                scenes.render(scenes.scene_at(7, 12), 16))


@pytest.mark.parametrize("resolution", [16, 48])
def test_shapes_dtypes_and_range(resolution):
  data = scenes.make_scenes(12, seed=0, resolution=resolution, max_objects=2)
  images, labels = data["images"], data["labels"]
  assert images.shape == (12, resolution, resolution, 3) and images.dtype == np.float32
  assert images.min() >= -1.0 and images.max() <= 1.0
  assert images.min() == -1.0  # the black background
  assert len(data["captions"]) == 12 and all(isinstance(c, str) for c in data["captions"])
  for name in ("shape", "colour", "size", "position"):
    assert labels[name].shape == (12, 2) and labels[name].dtype == np.int32
  assert labels["num_objects"].shape == (12,) and labels["num_objects"].dtype == np.int32
  counts = labels["num_objects"]
  assert set(counts) <= {1, 2}
  # -1 exactly past each image's last object.
  assert np.array_equal((labels["shape"] >= 0).sum(axis=1), counts)
  assert np.all(labels["colour"][:, 0] >= 0)


def test_heldout_pairs_never_in_train_and_always_in_heldout():
  train = scenes.make_scenes(3000, seed=11, split="train", resolution=8)["labels"]
  heldout = scenes.make_scenes(300, seed=11, split="heldout", resolution=8)["labels"]
  train_pairs = _pairs(train)
  assert not train_pairs & scenes.HELDOUT_COMBINATIONS
  # Every other pair, and every held-out colour and shape, does appear in training.
  all_pairs = {(c, s) for c in scenes.COLOUR_NAMES for s in scenes.SHAPES}
  assert train_pairs == all_pairs - scenes.HELDOUT_COMBINATIONS
  for n in range(300):
    present = heldout["shape"][n] >= 0
    pairs = {(scenes.COLOUR_NAMES[c], scenes.SHAPES[s])
             for c, s in zip(heldout["colour"][n][present], heldout["shape"][n][present])}
    assert pairs & scenes.HELDOUT_COMBINATIONS, n
  # The held-out object is not always first (captions name objects in label order).
  first = {(scenes.COLOUR_NAMES[c], scenes.SHAPES[s])
           for c, s in zip(heldout["colour"][:, 0], heldout["shape"][:, 0])}
  assert first - scenes.HELDOUT_COMBINATIONS


def test_objects_of_a_scene_sit_in_distinct_regions():
  labels = scenes.make_scenes(500, seed=2, resolution=8)["labels"]
  for positions, count in zip(labels["position"], labels["num_objects"]):
    assert len(set(positions[:count])) == count
  assert set(labels["num_objects"]) == {1, 2, 3}


def test_captions_name_each_object_in_order_and_vary():
  data = scenes.make_scenes(300, seed=5, resolution=8)
  labels = data["labels"]
  for n, text in enumerate(data["captions"]):
    where = 0
    for slot in range(labels["num_objects"][n]):
      colour = scenes.COLOUR_NAMES[labels["colour"][n, slot]]
      shape = scenes.SHAPES[labels["shape"][n, slot]]
      found = text.find(f"{colour} {shape}", where)
      assert found >= 0, (text, colour, shape)
      where = found + 1
    if labels["num_objects"][n] > 1:
      assert " and " in text
  texts = data["captions"]
  assert any(re.search(r"\b(small|large) ", t) for t in texts)
  assert any(" at the " in t or " on the " in t or " in the center" in t for t in texts)
  assert any(t.startswith("a picture of ") for t in texts)
  assert any(re.fullmatch(r"an? \w+ \w+", t) for t in texts)  # the bare "a red circle"
  # One scene, many phrasings: the caption rng alone changes the words.
  scene = scenes.scene_at(5, 0)
  variants = {scenes.caption(scene, np.random.default_rng(k)) for k in range(40)}
  assert len(variants) >= 6
  assert scenes.caption(scene, np.random.default_rng(9)) == scenes.caption(
      scene, np.random.default_rng(9))


def test_caption_examples_from_the_issue():
  circle = scenes.SceneObject("circle", "red", "small", "top left", (0.17, 0.17), 0.08)
  square = scenes.SceneObject("square", "blue", "large", "center", (0.5, 0.5), 0.14)
  triangle = scenes.SceneObject("triangle", "green", "small", "right", (0.83, 0.5), 0.08)
  assert scenes.object_phrase(circle, True, True) == "a small red circle at the top left"
  assert (scenes.object_phrase(square) + " and " + scenes.object_phrase(triangle)
          == "a blue square and a green triangle")
  orange = scenes.SceneObject("circle", "orange", "small", "top", (0.5, 0.17), 0.08)
  assert scenes.object_phrase(orange) == "an orange circle"
  text = scenes.caption(scenes.Scene((circle, square, triangle)), np.random.default_rng(0))
  assert re.search(r"red circle.*, .*blue square.* and .*green triangle", text), text


def test_circle_centre_pixel_is_its_colour():
  resolution = 32
  seen = 0
  for index in range(200):
    scene = scenes.scene_at(1, index)
    image = scenes.render(scene, resolution)
    for obj in scene.objects:
      if obj.shape != "circle":
        continue
      x, y = (int(v * resolution) for v in obj.center)
      expected = np.asarray(scenes.COLOURS[obj.colour], np.float32) / 127.5 - 1
      np.testing.assert_array_equal(image[y, x], expected)
      seen += 1
  assert seen > 50
  # And an edge pixel is a blend: anti-aliasing, not a hard threshold.
  lone = scenes.Scene((scenes.SceneObject("circle", "red", "large", "center",
                                          (0.5, 0.5), 0.14),))
  values = np.unique(scenes.render(lone, resolution)[..., 0])
  assert len(values) > 5


def test_render_is_fast():
  start = time.perf_counter()
  scenes.make_scenes(1000, seed=0, resolution=32)
  seconds = time.perf_counter() - start
  print(f"1,000 scenes at 32 px: {seconds:.2f} s")
  assert seconds < 30  # ~0.3 s measured; the bound only catches a pathological slowdown.


@pytest.mark.parametrize("kwargs, fragment", [
    ({"num": -1}, "num=-1"),
    ({"num": 2.5}, "num=2.5"),
    ({"seed": -3}, "seed=-3"),
    ({"split": "test"}, "split='test'"),
    ({"resolution": 4}, "resolution=4"),
    ({"resolution": "32"}, "resolution='32'"),
    ({"max_objects": 0}, "max_objects=0"),
    ({"max_objects": 4}, "max_objects=4"),
    ({"start": -1}, "start=-1"),
    ({"supersample": 0}, "supersample=0"),
])
def test_bad_arguments_are_one_line_user_errors(kwargs, fragment):
  arguments = {"num": 2, "seed": 0, **kwargs}
  with pytest.raises(UserError) as excinfo:
    scenes.make_scenes(**arguments)
  message = str(excinfo.value)
  assert fragment in message and "\n" not in message


def test_bad_scene_objects_are_user_errors():
  with pytest.raises(UserError, match="SceneObject.shape='hexagon'"):
    scenes.SceneObject("hexagon", "red", "small", "top", (0.5, 0.2), 0.08)
  with pytest.raises(UserError, match="SceneObject.colour='teal'"):
    scenes.SceneObject("circle", "teal", "small", "top", (0.5, 0.2), 0.08)
  with pytest.raises(UserError, match="resolution=7"):
    scenes.render(scenes.Scene(()), 7)
  with pytest.raises(UserError, match="scene.objects is empty"):
    scenes.caption(scenes.Scene(()), np.random.default_rng(0))

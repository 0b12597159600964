"""Zero-shot classification with a fake text encoder (each text hashed to a fixed random
vector), chance levels, and the scenes attribute / held-out combination labels."""

import hashlib

import numpy as np
import pytest

from genvis.data import digit_captions
from genvis.data import image_sources
from genvis.data import scenes
from genvis.errors import UserError
from genvis.eval import zero_shot

DIM = 4096  # random text vectors this long overlap by ~1/64: far below any shared prompt


def text_vector(text: str) -> np.ndarray:
  """A fixed random (unnormalised) vector per text: unrelated texts are near-orthogonal."""
  seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
  rng = np.random.default_rng(seed)
  # Norms that differ per text, so averaging before normalising would give other rows.
  return (rng.normal(size=DIM) * rng.uniform(0.2, 5.0)).astype(np.float32)


class FakeEncoder:
  """encode_texts that counts its calls and texts."""

  def __init__(self):
    self.calls = []

  def __call__(self, texts):
    self.calls.append(list(texts))
    return np.stack([text_vector(t) for t in texts])


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------ classifier
def test_ensemble_is_the_renormalised_mean_of_normalised_template_embeddings():
  encoder = FakeEncoder()
  names = ("cat", "dog", "car")
  templates = zero_shot.GENERIC_TEMPLATES[:3]
  classifier = zero_shot.zero_shot_classifier(encoder, names, templates)
  assert classifier.shape == (3, DIM)
  np.testing.assert_allclose(np.linalg.norm(classifier, axis=1), 1.0, rtol=1e-5)
  for row, name in zip(classifier, names):
    expected = _unit(np.mean([_unit(text_vector(t.format(name))) for t in templates], axis=0))
    np.testing.assert_allclose(row, expected, atol=1e-6)
  assert len(encoder.calls) == 1 and len(encoder.calls[0]) == 9  # one batched call


def test_no_ensemble_uses_the_first_template_only():
  encoder = FakeEncoder()
  classifier = zero_shot.zero_shot_classifier(encoder, ["seven"], zero_shot.DIGIT_TEMPLATES,
                                              ensemble=False)
  assert encoder.calls == [["a handwritten seven"]]
  np.testing.assert_allclose(classifier[0], _unit(text_vector("a handwritten seven")),
                             atol=1e-6)


def test_perfect_image_embeddings_give_full_accuracy():
  classifier = zero_shot.zero_shot_classifier(FakeEncoder(), digit_captions.CLASS_NAMES,
                                              zero_shot.DIGIT_TEMPLATES)
  labels = np.arange(40) % 10
  rng = np.random.default_rng(0)
  image_emb = 5.0 * classifier[labels] + 0.01 * rng.normal(size=(40, DIM))
  np.testing.assert_array_equal(zero_shot.zero_shot_predict(image_emb, classifier), labels)
  assert zero_shot.zero_shot_accuracy(image_emb, classifier, labels) == 1.0
  wrong = (labels + 1) % 10
  assert zero_shot.zero_shot_accuracy(image_emb, classifier, wrong) == 0.0
  # Weights: only weighted rows count, and a padding row's label (-1) is not checked.
  mixed = np.where(np.arange(40) < 10, labels, wrong)
  mixed[-1] = -1
  weights = (np.arange(40) < 20).astype(np.float32)
  assert zero_shot.zero_shot_accuracy(image_emb, classifier, mixed, weights) == 0.5


def test_chance_levels():
  chance = zero_shot.chance_level(np.array([0, 0, 0, 1, 2]), num_classes=4)
  assert chance == {"majority": 0.6, "uniform": 0.25}
  with pytest.raises(UserError, match="0..3"):
    zero_shot.chance_level(np.array([4]), num_classes=4)


@pytest.mark.parametrize("call, match", [
    (lambda: zero_shot.zero_shot_classifier(FakeEncoder(), ["a"], ["no slot"]), "exactly one"),
    (lambda: zero_shot.zero_shot_classifier(FakeEncoder(), ["a", "a"]), "distinct"),
    (lambda: zero_shot.zero_shot_classifier(lambda t: np.ones((1, 4)), ["a", "b"]),
     "encode_texts returned shape"),
    (lambda: zero_shot.zero_shot_accuracy(np.ones((2, 3)), np.ones((4, 3)), [0, 4]),
     "labels span"),
    (lambda: zero_shot.zero_shot_accuracy(np.ones((2, 5)), np.ones((4, 3)), [0, 1]),
     "image_emb has shape"),
    (lambda: zero_shot.scenes_attribute_prompts("texture"), "scenes attribute"),
])
def test_bad_input_is_a_user_error(call, match):
  with pytest.raises(UserError, match=match):
    call()


# ---------------------------------------------------------------------------------- scenes
def test_scenes_prompts_use_the_captions_phrasing():
  names, prompts = zero_shot.scenes_attribute_prompts("colour")
  assert names == scenes.COLOUR_NAMES
  orange = prompts[names.index("orange")]
  assert len(orange) == len(scenes.SHAPES) * len(zero_shot.SCENES_TEMPLATES)
  assert "an orange circle on a black background" in orange
  assert all("orange" in p for p in orange)
  names, prompts = zero_shot.scenes_attribute_prompts("position", ensemble=False)
  assert prompts[names.index("top left")][0] == "a red circle at the top left"
  assert len(prompts[0]) == len(zero_shot.COMBOS)
  names, prompts = zero_shot.scenes_attribute_prompts("combo")
  assert names[0] == "a red circle" and len(names) == 24
  assert prompts[0] == ["a red circle", "a picture of a red circle", "an image of a red circle",
                        "a red circle on a black background"]


@pytest.fixture(scope="module")
def heldout_scenes():
  config = dict(source="scenes", scenes_heldout=12, scenes_max_objects=2, resolution=8,
                scenes_label="colour", dataset_seed=5)
  return config, zero_shot.scenes_split_labels(config, "heldout")


def test_split_labels_match_the_dataset_and_its_captions(heldout_scenes):
  config, labels = heldout_scenes
  dataset = image_sources.load_image_dataset(config, "heldout")
  np.testing.assert_array_equal(labels["colour"][:, 0], dataset.labels)
  names = zero_shot.combo_class_names()
  for i, combo in enumerate(zero_shot.combo_labels(labels)):
    colour, shape = zero_shot.COMBOS[combo]
    # The caption names the first object first: "... a [size] red circle ...".
    assert names[combo].split()[-1] == shape and names[combo].split()[-2] == colour
    words = dataset.captions[i].replace(",", "").split()
    assert words[words.index(shape) - 1] == colour, dataset.captions[i]


def test_heldout_combo_labels_on_a_few_scenes(heldout_scenes):
  config, labels = heldout_scenes
  heldout = zero_shot.heldout_combo_labels(labels)
  present = zero_shot.combo_present(labels)
  for i, combo in enumerate(heldout):
    scene = scenes.scene_at(config["dataset_seed"], i, "heldout", max_objects=2)
    pairs = [(o.colour, o.shape) for o in scene.objects]
    first_heldout = next(p for p in pairs if p in scenes.HELDOUT_COMBINATIONS)
    assert zero_shot.COMBOS[combo] == first_heldout
    assert {zero_shot.COMBOS[c] for c in np.flatnonzero(present[i])} == set(pairs)
  train = zero_shot.scenes_split_labels(dict(config, scenes_train=10), "train")
  assert np.all(zero_shot.heldout_combo_labels(train) == -1)


def _aligned_image_embedding(colour, shape, size, position):
  """What a perfectly aligned model gives a one-object scene: the mean text embedding of the
  captions that could describe it (plain, with size, with position; every framing)."""
  obj = scenes.SceneObject(shape=shape, colour=colour, size=size, position=position,
                           center=(0.5, 0.5), radius=0.1)
  phrases = [scenes.object_phrase(obj), scenes.object_phrase(obj, with_size=True),
             scenes.object_phrase(obj, with_position=True)]
  texts = [t.format(p) for t in zero_shot.SCENES_TEMPLATES for p in phrases]
  return _unit(np.mean([_unit(text_vector(t)) for t in texts], axis=0))


def test_a_model_that_knows_each_description_classifies_every_attribute(heldout_scenes):
  _, labels = heldout_scenes
  first = {name: labels[name][:, 0] for name in ("colour", "shape", "size", "position")}
  image_emb = np.stack([
      _aligned_image_embedding(scenes.COLOUR_NAMES[c], scenes.SHAPES[s], scenes.SIZES[z],
                               scenes.POSITIONS[q])
      for c, s, z, q in zip(first["colour"], first["shape"], first["size"], first["position"])])
  encoder = FakeEncoder()
  metrics = zero_shot.scenes_zero_shot(encoder, image_emb, labels)
  # Marginalising the unnamed attributes out of the prompts recovers each one.
  for name in ("shape", "colour", "size", "position", "combo"):
    assert metrics[f"{name}/accuracy"] == 1.0, name
  assert metrics["combo/chance_uniform"] == 1 / 24
  assert metrics["position/chance_uniform"] == 1 / 9
  assert metrics["colour/chance_majority"] == zero_shot.chance_level(first["colour"], 6)[
      "majority"]
  # The held-out pair is predicted exactly where the first object is the held-out one.
  first_is_heldout = zero_shot.heldout_combo_labels(labels) == zero_shot.combo_labels(labels)
  assert 0 < np.mean(first_is_heldout) < 1
  assert metrics["heldout_combo/accuracy"] == pytest.approx(np.mean(first_is_heldout))
  assert metrics["combo_any/accuracy"] == 1.0
  assert metrics["colour_via_combo/accuracy"] == metrics["shape_via_combo/accuracy"] == 1.0
  assert len(encoder.calls) == 5  # one batched call per attribute classifier


def test_attributes_read_off_the_predicted_pair():
  """An image embedded as exactly one pair's prompt: its colour and shape come from that
  pair, right when the pair is right and wrong where the pair's attribute differs."""
  encoder = FakeEncoder()
  pairs = zero_shot.scenes_classifier(encoder, "combo")  # rows in COMBOS order
  labels = {name: np.full((3, 1), -1, np.int32) for name in zero_shot.SCENES_ATTRIBUTES}
  shown = [0, 7, 13]  # the pairs the images show
  truth = [0, 7, 0]  # the third image is really pair 0: colour and shape both differ
  for row, pair in enumerate(truth):
    colour, shape = zero_shot.COMBOS[pair]
    labels["colour"][row, 0] = scenes.COLOUR_NAMES.index(colour)
    labels["shape"][row, 0] = scenes.SHAPES.index(shape)
    labels["size"][row, 0] = labels["position"][row, 0] = 0
  metrics = zero_shot.scenes_zero_shot(encoder, pairs[shown], labels)
  expected = {name: np.mean([zero_shot.COMBOS[s][i] == zero_shot.COMBOS[t][i]
                             for s, t in zip(shown, truth)])
              for i, name in enumerate(("colour", "shape"))}
  assert metrics["colour_via_combo/accuracy"] == pytest.approx(expected["colour"])
  assert metrics["shape_via_combo/accuracy"] == pytest.approx(expected["shape"])


_DIGITS = image_sources.ImageDataset(images=np.zeros((1, 8, 8, 1), np.float32),
                                     labels=np.zeros(1, np.int32), num_classes=10,
                                     class_names=tuple("0123456789"), name="digits")


def test_every_digit_prompt_is_a_caption_of_its_digit():
  # The captions the digits dataset trains on: every phrasing of each image's digit.
  labels = np.arange(10)
  seen = {label: set(group)
          for label, group in zip(labels, digit_captions.all_digit_captions(labels, seed=0))}
  assert all(len(texts) == len(digit_captions.PHRASINGS) for texts in seen.values())
  prompts = zero_shot.digit_prompts()
  assert [set(group) for group in prompts] == [seen[label] for label in range(10)]
  assert zero_shot.digit_prompts(ensemble=False) == [[group[0]] for group in prompts]
  for template in zero_shot.DIGIT_TEMPLATES:
    for label, word in enumerate(digit_captions.CLASS_NAMES):
      assert template.format(word) in seen[label], template
  # What the digits' default classifier embeds, with or without ensembling.
  every_caption = set().union(*seen.values())
  for ensemble, per_class in ((True, len(digit_captions.PHRASINGS)), (False, 1)):
    encoder = FakeEncoder()
    zero_shot.dataset_classifier(encoder, _DIGITS, ensemble)
    assert len(encoder.calls) == 1 and len(encoder.calls[0]) == 10 * per_class
    assert set(encoder.calls[0]) <= every_caption, set(encoder.calls[0]) - every_caption


def test_dataset_classifier_picks_the_family_defaults():
  encoder = FakeEncoder()
  np.testing.assert_allclose(
      zero_shot.dataset_classifier(encoder, _DIGITS),
      zero_shot.classifier_from_prompts(encoder, zero_shot.digit_prompts()), atol=1e-6)
  shapes = image_sources.ImageDataset(images=np.zeros((1, 8, 8, 3), np.float32),
                                      labels=np.zeros(1, np.int32), num_classes=4,
                                      class_names=scenes.SHAPES, name="scenes")
  np.testing.assert_allclose(zero_shot.dataset_classifier(encoder, shapes),
                             zero_shot.scenes_classifier(encoder, "shape"), atol=1e-6)

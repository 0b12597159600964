"""Zero-shot classification by prompts, as in CLIP: classes named in text, never trained on.

Why: a contrastive image–text model classifies without a classifier head. Each class name is
written into a few prompt templates ("a photo of a {}."), the text encoder embeds them, and an
image goes to the class whose text embedding is most similar to its image embedding. This
module only needs `encode_texts(list[str]) -> [n, D]` and image embeddings, so it is
model-agnostic: the CLIP task supplies the encoder, a test supplies a fake one.

Prompt ensembling (CLIP paper, sec. 3.1.4): per class, every template filled with the class
name is embedded and L2-normalised, the embeddings are averaged and the mean re-normalised.
Averaging in embedding space costs one classifier row per class, however many templates.
`ensemble=False` uses only the first template of a set.

Chance: `chance_level` gives both the accuracy of always predicting the majority class (the
best constant guess given the label counts) and the uniform 1 / C. Benchmarks report the
majority figure as "chance": on unbalanced splits (the scenes held-out split, a
`max_examples` cut) 1 / C flatters a model that learnt only the label frequencies.

Digits (genvis/data/digit_captions.py): the prompts are the training captions themselves,
each phrasing with the word or the numeral as it was trained ("a handwritten seven", "the digit
7"); a phrasing only ever seen with numerals is never filled with a word.

Scenes (genvis/data/scenes.py): captions always name colour and shape together ("a red
circle", "a small red circle at the top left"), never one alone. So a classifier for one
attribute fills the scenes templates with every object phrase that has that attribute value
and averages over the others (colour "red": "a red circle", "a red square", ...): the prompts
use only the captions' vocabulary and the unnamed attributes are marginalised out. Held-out
composition: `COMBOS` names all colour x shape pairs ("a red triangle") and
`heldout_combo_labels` marks the held-out pair in each held-out scene, so one can measure
whether a model composes "red" and "triangle" it has only seen apart.
"""

import numbers
import string
from typing import Callable, Sequence

import numpy as np

from genvis.data import digit_captions
from genvis.data import image_sources
from genvis.data import scenes as scenes_lib
from genvis.errors import UserError

EncodeTexts = Callable[[list[str]], np.ndarray]

GENERIC_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "a photo of the {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of a {}.",
    "a drawing of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)


def _word_templates(phrasings: Sequence[str]) -> tuple[str, ...]:
  """The phrasings whose only field is {word}, as templates ("a handwritten {}")."""
  return tuple(phrasing.replace("{word}", "{}") for phrasing in phrasings
               if {field for _, field, _, _ in string.Formatter().parse(phrasing)
                   if field is not None} == {"word"})


# The digit captions' phrasings that name the digit by its word, as templates for the words of
# `digit_captions.CLASS_NAMES`; derived from digit_captions.PHRASINGS, so they cannot drift
# from what training saw. The digits' default classifier (`digit_prompts`) also uses the
# phrasings that take the numeral ("the digit 7").
DIGIT_TEMPLATES = _word_templates(digit_captions.PHRASINGS)
# The single-object caption framings of scenes.py, filled with a noun phrase that carries its
# own article ("an orange circle"), so no template has to guess "a" or "an".
SCENES_TEMPLATES = (
    "{}",
    "a picture of {}",
    "an image of {}",
    "{} on a black background",
)
TEMPLATES = {"generic": GENERIC_TEMPLATES, "digits": DIGIT_TEMPLATES,
             "scenes": SCENES_TEMPLATES}

# Every (colour, shape) pair of the scenes, colour-major: combo id = colour * 4 + shape.
COMBOS = tuple((c, s) for c in scenes_lib.COLOUR_NAMES for s in scenes_lib.SHAPES)
SCENES_ATTRIBUTES = tuple(image_sources.SCENES_LABELS)  # shape, colour, size, position


# ------------------------------------------------------------------------------ classifiers
def _check_templates(templates) -> tuple[str, ...]:
  templates = (templates,) if isinstance(templates, str) else tuple(templates)
  if not templates:
    raise UserError("zero_shot: templates is empty; expected at least one like 'a photo of "
                    "a {}.'")
  for template in templates:
    if not isinstance(template, str) or template.count("{}") != 1:
      raise UserError(f"zero_shot: template {template!r} must be a str with exactly one '{{}}' "
                      "for the class name")
  return templates


def _normalise(x: np.ndarray) -> np.ndarray:
  # The floor keeps an all-zero row zero instead of NaN (it then matches nothing).
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _encode(encode_texts: EncodeTexts, texts: list[str]) -> np.ndarray:
  embeddings = np.asarray(encode_texts(texts), dtype=np.float32)
  if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
    raise UserError(f"zero_shot: encode_texts returned shape {list(embeddings.shape)} for "
                    f"{len(texts)} texts; expected [{len(texts)}, dim]")
  if not np.all(np.isfinite(embeddings)):
    raise UserError("zero_shot: encode_texts returned NaN/inf embeddings")
  return embeddings


def classifier_from_prompts(encode_texts: EncodeTexts,
                            prompts_per_class: Sequence[Sequence[str]]) -> np.ndarray:
  """One unit-norm row per class: the re-normalised mean of its normalised prompt embeddings.

  Args:
    encode_texts: list of n strings -> [n, D] embeddings; called once, with every prompt.
    prompts_per_class: for each class, its prompts (at least one).

  Returns:
    float32 [C, D].
  """
  counts = [len(prompts) for prompts in prompts_per_class]
  if not counts or min(counts) == 0:
    raise UserError(f"zero_shot: prompts per class {counts}; expected >= 1 class, each with "
                    ">= 1 prompt")
  flat = [text for prompts in prompts_per_class for text in prompts]
  embeddings = _normalise(_encode(encode_texts, flat))
  ends = np.cumsum(counts)
  means = np.stack([embeddings[end - n:end].mean(axis=0) for end, n in zip(ends, counts)])
  return _normalise(means)


def zero_shot_classifier(encode_texts: EncodeTexts, class_names: Sequence[str],
                         templates: Sequence[str] = GENERIC_TEMPLATES,
                         ensemble: bool = True) -> np.ndarray:
  """Class embeddings [C, D] (unit rows) from prompts; `ensemble=False`: first template only."""
  templates = _check_templates(templates)
  names = list(class_names)
  if not names or len(set(names)) != len(names):
    raise UserError(f"zero_shot: class_names={names}; expected distinct names, at least one")
  used = templates if ensemble else templates[:1]
  return classifier_from_prompts(encode_texts, [[t.format(n) for t in used] for n in names])


# ---------------------------------------------------------------------- predictions, metrics
def _check_image_emb(image_emb, classifier) -> tuple[np.ndarray, np.ndarray]:
  image_emb = np.asarray(image_emb, dtype=np.float32)
  classifier = np.asarray(classifier, dtype=np.float32)
  if image_emb.ndim != 2 or classifier.ndim != 2 or image_emb.shape[1] != classifier.shape[1]:
    raise UserError(f"zero_shot: image_emb has shape {list(image_emb.shape)} and classifier "
                    f"{list(classifier.shape)}; expected [N, D] and [C, D]")
  return image_emb, classifier


def zero_shot_predict(image_emb, classifier) -> np.ndarray:
  """Class ids int32 [N]: the most similar class row (cosine; ties go to the lower id).

  The image embeddings need not be normalised: scaling a row does not move its argmax.
  """
  image_emb, classifier = _check_image_emb(image_emb, classifier)
  return np.argmax(image_emb @ classifier.T, axis=1).astype(np.int32)


def _check_labels(labels, num_examples: int, num_classes: int, weights) -> tuple:
  labels = np.asarray(labels)
  if labels.shape != (num_examples,) or not np.issubdtype(labels.dtype, np.integer):
    raise UserError(f"zero_shot: labels have shape {list(labels.shape)} and dtype "
                    f"{labels.dtype}; expected integer class ids [{num_examples}]")
  weights = (np.ones(num_examples, np.float64) if weights is None
             else np.asarray(weights, dtype=np.float64))
  if weights.shape != (num_examples,) or np.any(weights < 0) or weights.sum() <= 0:
    raise UserError(f"zero_shot: weights have shape {list(weights.shape)}; expected "
                    f"non-negative [{num_examples}] with a positive sum")
  counted = labels[weights > 0]
  if counted.size and (counted.min() < 0 or counted.max() >= num_classes):
    raise UserError(f"zero_shot: labels span {counted.min()}..{counted.max()} where weight > 0; "
                    f"expected class ids in 0..{num_classes - 1}")
  return labels, weights


def zero_shot_accuracy(image_emb, classifier, labels, weights=None) -> float:
  """Weighted fraction of images whose predicted class is their label.

  `weights` (default all 1) may be 0 for padding rows, whose labels are then not checked
  (e.g. -1 for a scene slot with no object).
  """
  predictions = zero_shot_predict(image_emb, classifier)
  labels, weights = _check_labels(labels, len(predictions), len(classifier), weights)
  return float(np.sum(weights * (predictions == labels)) / np.sum(weights))


def zero_shot_any_accuracy(image_emb, classifier, present) -> float:
  """Fraction of images whose predicted class is one of their classes (bool present [N, C]).

  For multi-object scenes, where several pairs are right answers for one image.
  """
  predictions = zero_shot_predict(image_emb, classifier)
  present = np.asarray(present, dtype=bool)
  if present.shape != (len(predictions), len(classifier)):
    raise UserError(f"zero_shot: present has shape {list(present.shape)}; expected "
                    f"[{len(predictions)}, {len(classifier)}] (images x classes)")
  return float(np.mean(present[np.arange(len(predictions)), predictions]))


def chance_level(labels, num_classes: int) -> dict:
  """{"majority": accuracy of always predicting the commonest class, "uniform": 1 / C}."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) \
      or num_classes < 1:
    raise UserError(f"zero_shot: num_classes={num_classes!r}; expected a positive int")
  labels = np.asarray(labels)
  if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) \
      or labels.min() < 0 or labels.max() >= num_classes:
    raise UserError(f"zero_shot: labels (shape {list(labels.shape)}) must be a non-empty "
                    f"array of class ids in 0..{num_classes - 1}")
  counts = np.bincount(labels, minlength=num_classes)
  return {"majority": float(counts.max() / labels.size), "uniform": 1.0 / num_classes}


# ---------------------------------------------------------------------------------- digits
def digit_prompts(ensemble: bool = True) -> list[list[str]]:
  """Prompts per digit class (0..9): the caption `digit_captions` writes for it in each of
  its PHRASINGS, word or numeral as that phrasing has it ("a handwritten seven", "the digit
  7"), so every prompt is a training caption; `ensemble=False`: the first phrasing only."""
  phrasings = range(len(digit_captions.PHRASINGS) if ensemble else 1)
  return [[digit_captions.caption_for(label, phrasing) for phrasing in phrasings]
          for label in range(len(digit_captions.CLASS_NAMES))]


# ---------------------------------------------------------------------------------- scenes
def _object_phrase(colour: str, shape: str, size: str | None = None,
                   position: str | None = None) -> str:
  """The captions' own noun phrase ("a small red circle at the top left"), via scenes.py."""
  obj = scenes_lib.SceneObject(shape=shape, colour=colour, size=size or scenes_lib.SIZES[0],
                               position=position or "center", center=(0.5, 0.5), radius=0.1)
  return scenes_lib.object_phrase(obj, with_size=size is not None,
                                  with_position=position is not None)


def combo_class_names(combos: Sequence[tuple[str, str]] = COMBOS) -> tuple[str, ...]:
  """Class names of (colour, shape) pairs as the captions say them: "a red circle"."""
  return tuple(_object_phrase(colour, shape) for colour, shape in combos)


def scenes_attribute_prompts(attribute: str, templates: Sequence[str] = SCENES_TEMPLATES,
                             ensemble: bool = True) -> tuple[tuple[str, ...], list[list[str]]]:
  """(class names, prompts per class) for one scenes attribute, or "combo" (colour x shape).

  A value's prompts are every template (or the first, `ensemble=False`) filled with every
  object phrase showing that value; the attributes a caption always names but the class does
  not (colour for shapes, colour and shape for sizes and positions) are averaged over.
  """
  templates = _check_templates(templates)
  used = templates if ensemble else templates[:1]
  if attribute == "combo":
    names = combo_class_names()
    phrases = [[name] for name in names]
  elif attribute in SCENES_ATTRIBUTES:
    names = tuple(image_sources.SCENES_LABELS[attribute])
    phrases = []
    for value in names:
      fixed = {attribute: value}
      phrases.append([_object_phrase(colour, shape, fixed.get("size"), fixed.get("position"))
                      for colour, shape in COMBOS
                      if fixed.get("colour", colour) == colour
                      and fixed.get("shape", shape) == shape])
  else:
    raise UserError(f"zero_shot: scenes attribute {attribute!r}; expected one of "
                    f"{', '.join(SCENES_ATTRIBUTES)} or combo")
  return names, [[t.format(p) for p in group for t in used] for group in phrases]


def scenes_classifier(encode_texts: EncodeTexts, attribute: str,
                      templates: Sequence[str] = SCENES_TEMPLATES,
                      ensemble: bool = True) -> np.ndarray:
  """Unit-norm class rows [C, D] for a scenes attribute or "combo"; see scenes_attribute_prompts."""
  _, prompts = scenes_attribute_prompts(attribute, templates, ensemble)
  return classifier_from_prompts(encode_texts, prompts)


def scenes_split_labels(data_config, split: str) -> dict[str, np.ndarray]:
  """Every attribute label of the scenes that `load_image_dataset(data_config, split)`
  returns: `image_sources.scenes_attribute_labels`, which owns where a split's scenes lie."""
  return image_sources.scenes_attribute_labels(data_config, split)


def combo_labels(scene_labels: dict, slot: int = 0) -> np.ndarray:
  """Combo ids (index into COMBOS) of object `slot` of each scene, int32 [N]; -1 if none."""
  colour, shape = scene_labels["colour"][:, slot], scene_labels["shape"][:, slot]
  ids = colour * len(scenes_lib.SHAPES) + shape
  return np.where(colour >= 0, ids, -1).astype(np.int32)


def combo_present(scene_labels: dict) -> np.ndarray:
  """bool [N, len(COMBOS)]: which colour-shape pairs each scene contains."""
  num_images, max_objects = scene_labels["colour"].shape
  present = np.zeros((num_images, len(COMBOS)), bool)
  for slot in range(max_objects):
    ids = combo_labels(scene_labels, slot)
    present[np.flatnonzero(ids >= 0), ids[ids >= 0]] = True
  return present


def heldout_combo_labels(scene_labels: dict) -> np.ndarray:
  """int32 [N]: the combo id of each scene's first object with a held-out pair; -1 if none.

  Every image of the scenes "heldout" split has one; "train" images have none.
  """
  heldout_ids = [COMBOS.index(pair) for pair in sorted(scenes_lib.HELDOUT_COMBINATIONS)]
  result = np.full(len(scene_labels["colour"]), -1, np.int32)
  for slot in reversed(range(scene_labels["colour"].shape[1])):  # the first slot wins
    ids = combo_labels(scene_labels, slot)
    result = np.where(np.isin(ids, heldout_ids), ids, result)
  return result


def scenes_zero_shot(encode_texts: EncodeTexts, image_emb, scene_labels: dict,
                     templates: Sequence[str] = SCENES_TEMPLATES,
                     ensemble: bool = True) -> dict:
  """Zero-shot accuracies on scenes, with their chance levels.

  Keys "{name}/accuracy", "{name}/chance_majority", "{name}/chance_uniform" for: each
  attribute and "combo" (of the first object, the one a caption names first);
  "heldout_combo" (the exact held-out pair among all 24, over images that contain one);
  "combo_any/accuracy" (the predicted pair is any object's pair; no chance figures); and
  "colour_via_combo/accuracy", "shape_via_combo/accuracy" (the first object's colour or
  shape as read off the predicted pair; chance as for the attribute).
  """
  metrics = {}
  combo_classifier = scenes_classifier(encode_texts, "combo", templates, ensemble)
  targets = {a: scene_labels[a][:, 0] for a in SCENES_ATTRIBUTES}
  targets["combo"] = combo_labels(scene_labels)
  for name, labels in targets.items():
    classifier = (combo_classifier if name == "combo"
                  else scenes_classifier(encode_texts, name, templates, ensemble))
    metrics[f"{name}/accuracy"] = zero_shot_accuracy(image_emb, classifier, labels)
    for kind, value in chance_level(labels, len(classifier)).items():
      metrics[f"{name}/chance_{kind}"] = value
  heldout = heldout_combo_labels(scene_labels)
  if np.any(heldout >= 0):
    has = heldout >= 0
    metrics["heldout_combo/accuracy"] = zero_shot_accuracy(
        np.asarray(image_emb)[has], combo_classifier, heldout[has])
    for kind, value in chance_level(heldout[has], len(COMBOS)).items():
      metrics[f"heldout_combo/chance_{kind}"] = value
  metrics["combo_any/accuracy"] = zero_shot_any_accuracy(image_emb, combo_classifier,
                                                         combo_present(scene_labels))
  # Colour and shape read off the predicted pair: the attribute prompts average their
  # embedding over every other attribute's words, which blurs a class; naming the whole
  # object, as captions do, classifies each attribute at least as well.
  predicted_pairs = np.asarray(COMBOS)[zero_shot_predict(image_emb, combo_classifier)]
  for column, name in ((0, "colour"), (1, "shape")):
    values = list(image_sources.SCENES_LABELS[name])
    predicted = np.array([values.index(v) for v in predicted_pairs[:, column]])
    labels = targets[name]
    real = labels >= 0
    metrics[f"{name}_via_combo/accuracy"] = float(np.mean(predicted[real] == labels[real]))
  return metrics


# ---------------------------------------------------------------------- per-dataset defaults
def dataset_classifier(encode_texts: EncodeTexts, dataset, ensemble: bool = True) -> np.ndarray:
  """The default zero-shot classifier for an `image_sources.ImageDataset`'s labels.

  digits: every training phrasing of each digit (`digit_prompts`); scenes: the labelled
  attribute (found from the class names) via `scenes_classifier`; anything else: its class
  names in GENERIC_TEMPLATES.
  """
  names = tuple(dataset.class_names)
  if not names:
    raise UserError(f"zero_shot: dataset {dataset.name!r} has no class_names to prompt with")
  if dataset.name == "digits":
    return classifier_from_prompts(encode_texts, digit_prompts(ensemble))
  if dataset.name == "scenes":
    for attribute, values in image_sources.SCENES_LABELS.items():
      if tuple(values) == names:
        return scenes_classifier(encode_texts, attribute, SCENES_TEMPLATES, ensemble)
  return zero_shot_classifier(encode_texts, names, GENERIC_TEMPLATES, ensemble)

"""Recall@k on cases whose answer is known, against a sort-based reference, and ties."""

import numpy as np
import pytest

from genvis.errors import UserError
from genvis.eval import retrieval


def _reference_ranks(image_emb, text_emb, text_to_image, text_keys=None):
  """Ranks from full stable argsorts of -similarity (the documented tie rule): the first
  position holding a hit, hits judged by owner, or by caption text when keys are given."""
  norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  similarity = norm(image_emb.astype(np.float32)) @ norm(text_emb.astype(np.float32)).T
  keys = np.arange(len(text_emb)) if text_keys is None else np.asarray(text_keys)
  image_keys = [set(keys[text_to_image == i].tolist()) for i in range(len(image_emb))]
  t2i = []
  for t in range(len(text_emb)):
    order = np.argsort(-similarity[:, t], kind="stable")
    t2i.append(next(r for r, i in enumerate(order) if keys[t] in image_keys[i]))
  i2t = []
  for i in range(len(image_emb)):
    order = np.argsort(-similarity[i], kind="stable")
    i2t.append(next((r for r, t in enumerate(order) if keys[t] in image_keys[i]), -1))
  return np.array(i2t), np.array(t2i)


def test_perfect_embeddings_give_recall_one():
  images = np.eye(6, dtype=np.float32)
  metrics = retrieval.recall_at_k(images, images * 3.0, np.arange(6))
  for direction in ("image_to_text", "text_to_image"):
    for k in (1, 5, 10):
      assert metrics[f"{direction}/R@{k}"] == 1.0
  assert metrics["image_to_text/queries"] == 6 and metrics["text_to_image/queries"] == 6


def test_known_permutation_gives_half_at_one_and_all_at_five():
  # Image i is axis i. Even texts point at their own image; odd text t points mostly at
  # image t-1 and less at its own image t, so its own image ranks second.
  images = np.eye(10, dtype=np.float32)
  texts = np.eye(10, dtype=np.float32)
  for t in range(1, 10, 2):
    texts[t] = images[t] + 2 * images[t - 1]
  metrics = retrieval.recall_at_k(images, texts, np.arange(10), ks=(1, 2, 5))
  assert metrics["text_to_image/R@1"] == 0.5
  assert metrics["text_to_image/R@2"] == 1.0
  assert metrics["text_to_image/R@5"] == 1.0
  # Image t-1 (even) ranks its own text first (similarity 1 vs 2/sqrt(5)); image t (odd)
  # has only its own text with a positive similarity.
  assert metrics["image_to_text/R@1"] == 1.0


def test_any_of_several_captions_is_a_hit():
  # Two images (axes 0 and 1) with three captions each.
  images = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
  texts = np.array([[0, 0, 1], [0.1, 1, 0], [1, 0, 0],      # image 0: its third is closest
                    [0.5, 0.5, 1], [0, 1, 2], [0, -1, 0]],  # image 1: its best is text 4
                   np.float32)
  owners = np.array([0, 0, 0, 1, 1, 1])
  # Image 0: text 2 (similarity 1) ranks first. Image 1: text 1 (of image 0, similarity
  # .995) beats its best own caption, text 4 (.447), which ranks second.
  assert retrieval.image_to_text_ranks(images, texts, owners).tolist() == [0, 1]
  # Text 0 and text 3 tie between the two images; the tie goes to image 0.
  assert retrieval.text_to_image_ranks(images, texts, owners).tolist() == [0, 1, 0, 1, 0, 1]
  metrics = retrieval.recall_at_k(images, texts, owners, ks=(1, 2))
  assert metrics["image_to_text/R@1"] == 0.5 and metrics["image_to_text/R@2"] == 1.0
  assert metrics["text_to_image/R@1"] == 0.5 and metrics["text_to_image/R@2"] == 1.0


def test_several_captions_match_the_sorted_reference_for_any_chunk_size():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(23, 8)).astype(np.float32)
  owners = np.concatenate([rng.integers(0, 20, 50), np.arange(20)])  # 3 images uncaptioned
  texts = images[owners] + 1.5 * rng.normal(size=(len(owners), 8)).astype(np.float32)
  ref_i2t, ref_t2i = _reference_ranks(images, texts, owners)
  for chunk_size in (1, 7, 1000):
    np.testing.assert_array_equal(
        retrieval.text_to_image_ranks(images, texts, owners, chunk_size), ref_t2i)
    np.testing.assert_array_equal(
        retrieval.image_to_text_ranks(images, texts, owners, chunk_size), ref_i2t)
  metrics = retrieval.recall_at_k(images, texts, owners, ks=(1, 5), chunk_size=7)
  assert metrics["image_to_text/queries"] == 20
  assert metrics["image_to_text/R@5"] == np.mean(ref_i2t[ref_i2t >= 0] < 5)
  assert metrics["text_to_image/R@1"] == np.mean(ref_t2i < 1)
  assert 0 < metrics["text_to_image/R@1"] < metrics["text_to_image/R@5"] < 1


def test_a_perfect_model_on_repeated_captions_needs_text_keys():
  # Six images of three classes (two each), one caption per image naming its class ("the
  # digit 7" for every seven): images and captions of a class embed identically.
  classes = np.array([0, 1, 2, 0, 1, 2])
  images = np.eye(3, dtype=np.float32)[classes]
  texts = images.copy()
  owners = np.arange(6)
  # Without keys the later copy of each caption (and image) loses the tie: R@1 = 1/2.
  plain = retrieval.recall_at_k(images, texts, owners, ks=(1, 2))
  assert plain["text_to_image/R@1"] == 0.5 and plain["image_to_text/R@1"] == 0.5
  keyed = retrieval.recall_at_k(images, texts, owners, ks=(1, 2), text_keys=classes * 7 - 3)
  for direction in ("image_to_text", "text_to_image"):
    assert keyed[f"{direction}/R@1"] == 1.0 and keyed[f"{direction}/R@2"] == 1.0
  assert keyed["image_to_text/queries"] == 6 and keyed["text_to_image/queries"] == 6
  # A wrong model stays wrong with keys: captions shifted to the next class miss at 1.
  shifted = np.roll(np.eye(3, dtype=np.float32), 1, axis=0)[classes]
  wrong = retrieval.recall_at_k(images, shifted, owners, ks=(1,), text_keys=classes)
  assert wrong["text_to_image/R@1"] == 0.0 and wrong["image_to_text/R@1"] == 0.0


def test_text_keys_match_the_sorted_reference_for_any_chunk_size():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(17, 6)).astype(np.float32)
  owners = np.concatenate([rng.integers(0, 15, 30), np.arange(15)])  # 2 images uncaptioned
  keys = rng.integers(0, 9, len(owners))  # many captions repeated, across images
  texts = images[owners] + 1.5 * rng.normal(size=(len(owners), 6)).astype(np.float32)
  ref_i2t, ref_t2i = _reference_ranks(images, texts, owners, keys)
  plain_i2t, plain_t2i = _reference_ranks(images, texts, owners)
  assert np.all(ref_t2i <= plain_t2i) and np.any(ref_t2i < plain_t2i)  # keys add hits
  for chunk_size in (1, 4, 1000):
    np.testing.assert_array_equal(
        retrieval.text_to_image_ranks(images, texts, owners, chunk_size, text_keys=keys),
        ref_t2i)
    np.testing.assert_array_equal(
        retrieval.image_to_text_ranks(images, texts, owners, chunk_size, text_keys=keys),
        ref_i2t)
  # All-distinct keys are the plain definition.
  distinct = rng.permutation(len(owners)) * 5
  np.testing.assert_array_equal(
      retrieval.text_to_image_ranks(images, texts, owners, 4, text_keys=distinct), plain_t2i)
  np.testing.assert_array_equal(
      retrieval.image_to_text_ranks(images, texts, owners, 4, text_keys=distinct), plain_i2t)


def test_exact_ties_keep_index_order():
  # Every image identical: each text's own image ranks at its index among the images.
  images = np.ones((4, 3), np.float32)
  texts = np.ones((8, 3), np.float32)
  owners = np.array([0, 1, 2, 3, 3, 2, 1, 0])
  assert retrieval.text_to_image_ranks(images, texts, owners).tolist() == owners.tolist()
  # Image i's earliest caption is at index i, which is its rank among the 8 tied texts.
  assert retrieval.image_to_text_ranks(images, texts, owners).tolist() == [0, 1, 2, 3]
  metrics = retrieval.recall_at_k(images, texts, owners, ks=(1, 2))
  assert metrics["text_to_image/R@1"] == 0.25 and metrics["text_to_image/R@2"] == 0.5
  assert metrics["image_to_text/R@1"] == 0.25 and metrics["image_to_text/R@2"] == 0.5


@pytest.mark.parametrize("kwargs, match", [
    (dict(text_to_image=np.array([0, 5])), "text_to_image spans"),
    (dict(text_to_image=np.array([0])), "text_to_image has shape"),
    (dict(text_emb=np.ones((2, 4))), "same embedding dim"),
    (dict(image_emb=np.zeros((3, 3))), "all-zero rows"),
    (dict(ks=(0,)), "ks="),
    (dict(chunk_size=0), "chunk_size"),
    (dict(text_keys=np.array([0, 1, 2])), "text_keys has shape"),
    (dict(text_keys=np.array([0.0, 1.0])), "text_keys has shape"),
])
def test_bad_input_is_a_user_error(kwargs, match):
  args = dict(image_emb=np.eye(3), text_emb=np.eye(3)[:2], text_to_image=np.array([0, 1]))
  args.update(kwargs)
  with pytest.raises(UserError, match=match):
    retrieval.recall_at_k(**args)

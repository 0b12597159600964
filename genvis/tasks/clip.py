"""Contrastive image–text pre-training: CLIP (Radford et al. 2021) or SigLIP (Zhai et al.
2023), with zero-shot classification and retrieval as its evaluators.

A batch is images [B, H, W, C] in [-1, 1], caption tokens [B, T] (genvis.data.caption_tokens:
SOT, BPE, EOT, padding), `caption_ids` [B] (equal for interchangeable captions, so a
duplicate caption is never another image's negative) and weights (0 for padding rows of a
held-out batch). The model (genvis.models.clip) embeds both sides; the loss
(genvis.nn.contrastive) is over the *global* batch: every image against every caption of
all devices. `config.clip.sharded_loss` picks how it is computed on a mesh: False lets XLA
lay out the [N, N] similarities of the global arrays; True runs it under shard_map, each
device holding only its rows against the gathered embeddings ([N / devices, N]), with
gradients flowing back through the gather.

Evaluation reports the held-out contrastive loss and, as `Task.evaluators`, zero-shot
accuracy and retrieval on the test split:
  - zero-shot: class names in prompt templates -> averaged, normalised text embeddings
    (genvis.eval.zero_shot), with prompt ensembling (`ensemble`) and with the first template
    only (`single`). Scenes report shape, colour, size, position and the colour–shape pair of
    the first object, and on the "heldout" split (colour–shape pairs never seen in training)
    the held-out pair among all 24 and its colour and shape; each with its chance level.
    Digits and labelled tfds/folder data report accuracy on their labels.
  - retrieval: image→text and text→image recall@1/5/10 over every test caption.
The tokenizer is fitted on the training captions and saved in the workdir with the
checkpoints (`tokenizer.json`), so zero-shot prompts are tokenised as training captions were.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from genvis.data import caption_tokens, image_sources
from genvis.data.caption_batches import CaptionBatches
from genvis.errors import UserError
from genvis.eval import retrieval, zero_shot
from genvis.models import clip, vit
from genvis.nn import contrastive
from genvis.nn.transformer import stack_flops
from genvis.tasks.base import Task
from genvis.train.distributed import map_in_chunks

ENCODE_CHUNK = 256  # images or captions per compiled encoder call


class ContrastiveTask(Task):
  """CLIP or SigLIP (`config.model.loss`) on `config.data`'s captioned images."""

  def __init__(self, config, workdir, *, process_index=0, process_count=1):
    super().__init__(config, workdir, process_index=process_index, process_count=process_count)
    model = config.model
    if model.eot_token_id != caption_tokens.END_ID:
      raise UserError(f"config.model.eot_token_id={model.eot_token_id}: the caption tokenizer "
                      f"ends every caption with id {caption_tokens.END_ID}")
    self.batches = CaptionBatches(
        config.data, config.seed, max_len=model.max_len, vocab_size=model.vocab_size,
        workdir=workdir, write_tokenizer=process_index == 0, process_index=process_index,
        process_count=process_count)
    self.train_set, self.test_set = self.batches.images.train_set, self.batches.images.test_set
    self.image_shape = self.batches.images.image_shape
    vit.fill_from_data(model, self.image_shape)
    self.model_config = clip.CLIPConfig(**model.to_dict())
    self.model = clip.CLIP(self.model_config)
    self.sharded_loss = bool(config.clip.sharded_loss)
    self.scenes = config.data.source == "scenes"
    if self.scenes:  # every attribute of every object, for zero-shot; heldout split too
      if config.data.scenes_heldout < 1:
        raise UserError("config.data.scenes_heldout=0: zero-shot evaluation of the held-out "
                        "colour-shape pairs needs held-out scenes")
      self.heldout_set = image_sources.load_image_dataset(config.data, "heldout")
      self.scene_labels = {split: image_sources.scenes_attribute_labels(config.data, split)
                           for split in ("test", "heldout")}
    self._embedded = (None, None)  # (params, test image embeddings) of the latest evaluation

  @property
  def tokenizer(self) -> caption_tokens.CaptionTokenizer:
    return self.batches.tokenizer

  # ----------------------------------------------------------------------------- batches
  def batch_spec(self):
    batch, length = self.config.data.batch_size, self.model_config.max_len
    return {"images": jax.ShapeDtypeStruct((batch, *self.image_shape), jnp.float32),
            "tokens": jax.ShapeDtypeStruct((batch, length), jnp.int32),
            "caption_ids": jax.ShapeDtypeStruct((batch,), jnp.int32),
            "weights": jax.ShapeDtypeStruct((batch,), jnp.float32)}

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, *self.image_shape), jnp.float32),
                           jnp.zeros((1, self.model_config.max_len), jnp.int32))

  def train_batch(self, step):
    return self.batches.train_batch(step)

  def eval_batches(self):
    """The test split with each image's first caption (`eval.num_batches` < 0: all of it)."""
    for _, batch in self.batches.eval_batches(self.config.eval.num_batches):
      yield batch

  # ----------------------------------------------------------------------------- loss
  def loss_fn(self, params, batch, rng, *, train):
    out = self.model.apply({"params": params}, batch["images"], batch["tokens"], train=train,
                           rngs={"dropout": rng}, method=_embed_and_scale)
    image_emb, text_emb, scale, bias = out
    mesh = None
    if self.sharded_loss:
      mesh = jax.sharding.get_abstract_mesh()
      if mesh.empty:
        raise UserError("config.clip.sharded_loss=True needs a mesh in scope (the trainer's "
                        "sharding_context)")
    loss = contrastive.contrastive_loss(
        self.model_config.loss, image_emb, text_emb, scale, bias,
        caption_ids=batch["caption_ids"], weights=batch["weights"], mesh=mesh)
    metrics = {"loss": loss, "logit_scale": scale,
               "accuracy": _in_batch_accuracy(image_emb, text_emb, batch)}
    if bias is not None:
      metrics["logit_bias"] = bias
    if not train:
      metrics["weight"] = jnp.sum(batch["weights"])
    return loss, metrics

  def microbatch_mismatch(self):
    return "its contrastive loss compares each image with every caption of the whole batch"

  def flops_per_step(self, num_params):
    return flops_per_pair(self.model_config) * self.tokens_per_step()

  def tokens_per_step(self):
    return self.config.data.batch_size  # image–caption pairs

  def model_field_defaults(self):
    return clip.default_fields()

  def metadata(self):
    return {"task": "clip", "model": dataclasses.asdict(self.model_config),
            "image_shape": list(self.image_shape)}

  # ----------------------------------------------------------------------------- evaluation
  def evaluators(self):
    return {"zeroshot": self.zero_shot_metrics, "retrieval": self.retrieval_metrics}

  def encode_images(self, params, images: np.ndarray) -> np.ndarray:
    """[N, E] unit image embeddings, in fixed-size chunks (one compiled shape)."""
    encode = _encoder(self.model, "encode_images")
    return map_in_chunks(lambda chunk: encode(params, chunk), images, ENCODE_CHUNK)

  def encode_texts(self, params, texts) -> np.ndarray:
    """[N, E] unit embeddings of caption strings, tokenised as the training captions."""
    return self.encode_tokens(params, self.tokenizer.encode(list(texts),
                                                            self.model_config.max_len))

  def encode_tokens(self, params, tokens: np.ndarray) -> np.ndarray:
    encode = _encoder(self.model, "encode_texts")
    return map_in_chunks(lambda chunk: encode(params, chunk), tokens, ENCODE_CHUNK)

  def test_image_embeddings(self, params) -> np.ndarray:
    """The test images' embeddings, computed once per evaluation: the evaluators are called
    one after the other with the same parameters object."""
    cached_params, embeddings = self._embedded
    if cached_params is not params:
      embeddings = self.encode_images(params, self.test_set.images)
      self._embedded = (params, embeddings)
    return embeddings

  def zero_shot_metrics(self, params) -> dict:
    """Zero-shot accuracy (and chance levels) with and without prompt ensembling."""
    encode_texts = functools.partial(self.encode_texts, params)
    test_emb = self.test_image_embeddings(params)
    heldout_emb = self.encode_images(params, self.heldout_set.images) if self.scenes else None
    metrics = {}
    for mode, ensemble in (("ensemble", True), ("single", False)):
      if self.scenes:
        found = zero_shot.scenes_zero_shot(encode_texts, test_emb, self.scene_labels["test"],
                                           ensemble=ensemble)
        # The "heldout" split: the held-out colour-shape pair among all 24, and its colour
        # and shape alone.
        heldout = zero_shot.scenes_zero_shot(encode_texts, heldout_emb,
                                             self.scene_labels["heldout"], ensemble=ensemble)
        found.update({f"heldout_split/{k}": v for k, v in heldout.items()
                      if k.split("/")[0] in ("heldout_combo", "colour", "shape")})
      elif self.test_set.labels is not None and self.test_set.class_names:
        classifier = zero_shot.dataset_classifier(encode_texts, self.test_set, ensemble)
        found = {"accuracy": zero_shot.zero_shot_accuracy(test_emb, classifier,
                                                          self.test_set.labels)}
        found.update({f"chance_{kind}": value for kind, value in zero_shot.chance_level(
            self.test_set.labels, len(classifier)).items()})
      else:
        return {}
      metrics.update({f"{mode}/{k}": v for k, v in found.items()})
    return metrics

  def retrieval_metrics(self, params) -> dict:
    """Recall@1/5/10 both ways over every caption of the test split."""
    tokens, owners = self.batches.retrieval_captions()
    # Identical captions (digits repeat ~60 phrasings) count as the same text: retrieving any
    # copy of an image's caption is a hit.
    return retrieval.recall_at_k(self.test_image_embeddings(params),
                                 self.encode_tokens(params, tokens), owners,
                                 text_keys=self.batches.retrieval_text_keys())


def _embed_and_scale(module: clip.CLIP, images, tokens, *, train: bool):
  """(image embeddings, text embeddings, scale, bias or None): what the loss needs."""
  scale, bias = module.logit_scale_and_bias()
  return (module.encode_images(images, train=train),
          module.encode_texts(tokens, train=train), scale, bias)


def _in_batch_accuracy(image_emb, text_emb, batch):
  """Fraction of real images whose most similar caption in the (global) batch is theirs or
  an interchangeable one (same caption id)."""
  weights = batch["weights"]
  similarity = image_emb @ text_emb.T
  similarity = jnp.where(weights[None, :] > 0, similarity, -jnp.inf)  # padding is no answer
  chosen = jnp.argmax(similarity, axis=-1)
  correct = (batch["caption_ids"][chosen] == batch["caption_ids"]).astype(jnp.float32)
  return jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@functools.lru_cache(maxsize=8)
def _encoder(model: clip.CLIP, method: str):
  return jax.jit(lambda params, x: model.apply({"params": params}, x,
                                               method=getattr(clip.CLIP, method)))


def flops_per_pair(config: clip.CLIPConfig) -> float:
  """Training FLOPs per image–caption pair (3 x forward): the image tower as a headless
  ViT, the text tower's blocks on max_len tokens, both projections; the N x N similarities
  (2 * N * E per pair) are left out."""
  projections = 2 * config.embed_dim * (config.vision_d_model + config.text_d_model)
  text_forward = stack_flops(config.text_config(), config.max_len)
  return vit.flops_per_image(config.vision_config()) + 3.0 * (text_forward + projections)

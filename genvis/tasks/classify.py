"""Supervised image classification with a ViT: from scratch, or fine-tuning a pre-trained
encoder (MAE's, or another classifier's).

A batch is images [B, H, W, C] in [-1, 1], int labels and per-image weights. The loss is the
softmax cross-entropy against labels smoothed by `config.classify.label_smoothing` (ViT and
MAE fine-tuning use 0.1); evaluation reports the unsmoothed cross-entropy (`val_loss`) and
top-1 accuracy over the whole test split.

Fine-tuning: `config.init_from` names the pre-training run. From an MAE run, this task takes
its encoder, params["vit"] (the decoder is left out), after checking that the encoder's
fields match (`ENCODER_FIELDS`: the head's num_classes, pooling and representation_size are
the classifier's own); from another classification run it takes everything but a head
trained for a different number of classes. MAE's recipe fine-tunes with the patch tokens'
mean (`pooling="mean"`), label smoothing and layer-wise learning-rate decay, for which this
task gives each parameter its depth (`lr_layers`): 0 for the patch embedding, class token
and positions, i for block i (1-based), num_layers + 1 for the final norm and the head.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genvis.data.image_batches import ImageBatches
from genvis.errors import UserError
from genvis.models import vit
from genvis.tasks.base import InitFromParts, Task

# The classifier's own model fields, free to differ from the pre-training run's encoder.
HEAD_FIELDS = ("num_classes", "pooling", "representation_size")
ENCODER_FIELDS = tuple(f.name for f in dataclasses.fields(vit.ViTConfig)
                       if f.name not in HEAD_FIELDS)
_EMBEDDING_PARAMS = ("patch_embed", "cls_token", "pos_embedding")


class ClassificationTask(Task):
  """ViT classification of `config.data`'s labelled images."""

  def __init__(self, config, workdir, *, process_index=0, process_count=1):
    super().__init__(config, workdir, process_index=process_index, process_count=process_count)
    # Layer-wise lr decay is the fine-tuning recipe's mark (configs/vit.py recipe=finetune):
    # without a pre-trained encoder it would train random weights with that recipe, silently.
    if config.optim.layer_decay < 1 and not config.get("init_from"):
      raise UserError(f"config.optim.layer_decay={config.optim.layer_decay} is the fine-tuning "
                      "recipe, but config.init_from is empty: set it to the pre-training run's "
                      "workdir, or train from scratch with recipe=scratch (layer_decay=1.0)")
    self.batches = ImageBatches(config.data, config.seed, labels=True,
                                process_index=process_index, process_count=process_count)
    self.train_set, self.test_set = self.batches.train_set, self.batches.test_set
    self.image_shape = self.batches.image_shape
    vit.fill_from_data(config.model, self.image_shape, num_classes=self.train_set.num_classes)
    self.model_config = vit.ViTConfig(**config.model.to_dict())
    self.model = vit.ViT(self.model_config)
    self.label_smoothing = float(config.classify.label_smoothing)

  # ----------------------------------------------------------------------------- batches
  def batch_spec(self):
    batch = self.config.data.batch_size
    return {"images": jax.ShapeDtypeStruct((batch, *self.image_shape), jnp.float32),
            "labels": jax.ShapeDtypeStruct((batch,), jnp.int32),
            "weights": jax.ShapeDtypeStruct((batch,), jnp.float32)}

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, *self.image_shape), jnp.float32))

  def train_batch(self, step):
    return self.batches.train_batch(step)

  def eval_batches(self):
    """The whole test split (`eval.num_batches` < 0), or its first `num_batches` batches."""
    for _, batch in self.batches.eval_batches(self.config.eval.num_batches):
      yield batch

  # ----------------------------------------------------------------------------- loss
  def loss_fn(self, params, batch, rng, *, train):
    logits = self.model.apply({"params": params}, batch["images"], train=train,
                              rngs={"dropout": rng})
    num_classes = self.model_config.num_classes
    targets = optax.smooth_labels(jax.nn.one_hot(batch["labels"], num_classes),
                                  self.label_smoothing if train else 0.0)
    per_image = optax.softmax_cross_entropy(logits, targets)
    weights = batch["weights"]
    total = jnp.maximum(jnp.sum(weights), 1.0)
    loss = jnp.sum(per_image * weights) / total
    correct = (jnp.argmax(logits, axis=-1) == batch["labels"]).astype(jnp.float32)
    metrics = {"loss": loss, "accuracy": jnp.sum(correct * weights) / total}
    if not train:
      metrics["weight"] = jnp.sum(weights)  # held-out batches may end in padding rows
    return loss, metrics

  def flops_per_step(self, num_params):
    return vit.flops_per_image(self.model_config) * self.tokens_per_step()

  def tokens_per_step(self):
    return self.config.data.batch_size  # images

  def model_field_defaults(self):
    return vit.default_fields()

  def metadata(self):
    return {"task": "classify", "model": dataclasses.asdict(self.model_config),
            "image_shape": list(self.image_shape)}

  # ----------------------------------------------------------------------------- fine-tuning
  def init_from_parts(self, saved_meta):
    if saved_meta.get("task") == "mae":
      return InitFromParts(source_prefix="vit", model_fields=ENCODER_FIELDS)
    saved_classes = saved_meta.get("model", {}).get("num_classes")
    other_classes = saved_classes != self.model_config.num_classes
    return InitFromParts(exclude=("head",) if other_classes else (),
                         model_fields=ENCODER_FIELDS)

  def lr_layers(self):
    deepest = self.model_config.num_layers + 1

    def depth(names):
      if names[0] in _EMBEDDING_PARAMS:
        return 0
      if names[:2] == ("encoder", "blocks"):
        if names[2] == "layers":  # scanned: stacked along the leading axis
          return np.arange(1, deepest)
        return int(names[2].removeprefix("layer_")) + 1
      return deepest  # the final norm, pre-logits and head

    return depth, deepest

"""Supervised fine-tuning as in GPT-1 (Radford et al. 2018, section 3.2).

A pre-trained GPT gets a linear head W_y on the final hidden state of each text's last token
(`genvis.models.gpt_classifier`) and is trained on labelled text with

    L3(C) = L2(C) + λ · L1(C)

where L2 is the classification cross-entropy and L1 the next-token LM loss on the same texts
("including language modeling as an auxiliary objective ... improving generalization ... and
accelerating convergence"). λ is `config.sft.lm_loss_weight`; λ = 0 turns L1 off (it is still
reported as `lm_loss`). L1 averages over real tokens only: positions after a text's length are
padding and predict nothing.

Starting weights come from `config.init_from` (a pre-training run's workdir or one of its
checkpoints), which the trainer loads generically; this task only has to (1) keep the LM's
parameter names, and (2) use the pre-training run's tokenizer, which it copies from that
workdir. Without `init_from` the same model trains from scratch.

Evaluation covers every held-out example once (`config.eval.num_batches` < 0, the gpt_sft
default; > 0 caps the batches): the last batch is padded with rows of weight 0 and each
batch reports its `weight` (real texts; `weight/lm_loss`: real tokens), by which the trainer
averages batches. The held-out `loss` is then val_cls_loss + λ·val_lm_loss of those means.
"""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genvis.data import labelled_text, tokenizers
from genvis.data.labelled_batches import LabelledBatches
from genvis.errors import UserError
from genvis.models import gpt
from genvis.models.gpt_classifier import GPTClassifier
from genvis.tasks.base import Task
from genvis.tasks.lm import resolve_model_config

log = logging.getLogger(__name__)


class SupervisedFineTuningTask(Task):
  """GPT-1 fine-tuning: class head + auxiliary LM loss on `config.data`'s labelled text."""

  def __init__(self, config, workdir, *, process_index=0, process_count=1):
    super().__init__(config, workdir, process_index=process_index, process_count=process_count)
    self.lm_loss_weight = float(config.sft.lm_loss_weight)
    if self.lm_loss_weight < 0:
      raise UserError(f"config.sft.lm_loss_weight={self.lm_loss_weight} must be >= 0")
    self.splits = labelled_text.load_labelled_splits(config.data)
    fitted = tokenizers.fitted_by_this_run(config, workdir)
    self.tokenizer = self._tokenizer(config, workdir, write=process_index == 0)
    self.model_config = resolve_model_config(config, self.tokenizer, fitted=fitted)
    self.model = GPTClassifier(self.model_config, num_classes=self.splits.num_classes)
    self.seq_len = config.data.seq_len or self.model_config.max_len
    if self.seq_len > self.model_config.max_len:
      raise UserError(f"config.data.seq_len={self.seq_len} > model.max_len="
                      f"{self.model_config.max_len}")
    batch = config.data.batch_size
    self.train_set = LabelledBatches(self._encode(self.splits.train_texts),
                                     self.splits.train_labels, self.seq_len, batch,
                                     seed=config.seed, name="the training split")
    self.heldout_set = LabelledBatches(self._encode(self.splits.heldout_texts),
                                       self.splits.heldout_labels, self.seq_len, batch,
                                       seed=config.seed + 1, name="the held-out split")
    log.info("sft: %d training / %d held-out examples, %d classes; %d / %d truncated to %d "
             "tokens", self.train_set.num_examples, self.heldout_set.num_examples,
             self.splits.num_classes, self.train_set.truncated, self.heldout_set.truncated,
             self.seq_len)

  # ------------------------------------------------------------------------ set-up
  def _tokenizer(self, config, workdir, write: bool):
    """This run's saved tokenizer; else the pre-training run's (config.init_from), copied
    into this workdir; else one fitted on the labelled texts."""
    if config.init_from:
      return tokenizers.load_for_init_from(config.data, config.init_from, workdir, write=write)
    return tokenizers.fit_or_load(config.data, "\n".join(self.splits.train_texts),
                                  "\n".join(self.splits.heldout_texts), workdir, write=write)

  def _encode(self, texts: list[str]) -> list[np.ndarray]:
    """Token ids per text. A character tokenizer drops characters it does not know (text
    held out of pre-training may hold a few), and the count is logged."""
    if self.tokenizer.kind != "char":
      return [self.tokenizer.encode(text) for text in texts]
    known = set(self.tokenizer.chars)
    dropped = sum(1 for text in texts for c in text if c not in known)
    if dropped:
      log.warning("sft: dropped %d characters outside the tokenizer's vocabulary", dropped)
    return [self.tokenizer.encode("".join(c for c in text if c in known)) for text in texts]

  # ------------------------------------------------------------------------ Task API
  def batch_spec(self):
    b, t = self.config.data.batch_size, self.seq_len
    return {"tokens": jax.ShapeDtypeStruct((b, t), jnp.int32),
            "lengths": jax.ShapeDtypeStruct((b,), jnp.int32),
            "labels": jax.ShapeDtypeStruct((b,), jnp.int32),
            "weights": jax.ShapeDtypeStruct((b,), jnp.float32)}

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.seq_len), jnp.int32),
                           jnp.ones((1,), jnp.int32))

  def train_batch(self, step):
    return self.train_set.train_batch(step, self.process_index, self.process_count)

  def eval_batches(self):
    count = self.heldout_set.num_eval_batches
    if self.config.eval.num_batches > 0:
      count = min(count, self.config.eval.num_batches)
    for i in range(count):
      yield self.heldout_set.eval_batch(i, self.process_index, self.process_count)

  def loss_fn(self, params, batch, rng, *, train):
    lm_logits, class_logits = self.model.apply(
        {"params": params}, batch["tokens"], batch["lengths"], train=train,
        rngs={"dropout": rng})
    weights = batch["weights"]
    num_real = _total(batch, "rows", weights.sum())
    class_ce = optax.softmax_cross_entropy_with_integer_labels(class_logits, batch["labels"])
    cls_loss = (class_ce * weights).sum() / num_real
    correct = (jnp.argmax(class_logits, axis=-1) == batch["labels"]) * weights
    lm_loss, lm_tokens = self.lm_loss(lm_logits, batch)
    loss = cls_loss + self.lm_loss_weight * lm_loss if self.lm_loss_weight > 0 else cls_loss
    metrics = {"loss": loss, "cls_loss": cls_loss, "lm_loss": lm_loss,
               "accuracy": correct.sum() / num_real}
    if not train:  # the trainer averages held-out batches by these weights
      metrics["weight"] = weights.sum()
      metrics["weight/lm_loss"] = lm_tokens
    return loss, metrics

  def held_out_means(self, means):
    """L2 is a mean over texts and L1 over tokens, so a batch's L2 + λ·L1, averaged by texts,
    is not L2 + λ·L1 of the held-out set when batches differ in tokens per text."""
    if self.lm_loss_weight > 0:
      means = {**means, "loss": means["cls_loss"] + self.lm_loss_weight * means["lm_loss"]}
    return means

  @staticmethod
  def lm_loss(lm_logits, batch):
    """(L1, the number of tokens it averages over): mean next-token cross-entropy over the
    real tokens of real rows (position t predicts token t + 1 when t + 1 < length)."""
    mask = _lm_mask(batch)
    ce = optax.softmax_cross_entropy_with_integer_labels(lm_logits[:, :-1], batch["tokens"][:, 1:])
    return (ce * mask).sum() / _total(batch, "lm_tokens", mask.sum()), mask.sum()

  def batch_totals(self, batch):
    """Texts of different lengths give microbatches unequal shares of the real tokens that
    the LM loss averages over: gradient accumulation divides by the whole batch's count."""
    return {"rows": batch["weights"].sum(), "lm_tokens": _lm_mask(batch).sum()}

  def flops_per_step(self, num_params):
    per_token = gpt.flops_per_token(self.model_config, num_params, self.seq_len)
    return per_token * self.tokens_per_step()

  def tokens_per_step(self):
    return self.config.data.batch_size * self.seq_len  # padding included: it is computed

  def model_field_defaults(self):
    return gpt.default_fields()

  def metadata(self):
    return {"task": "sft", "model": dataclasses.asdict(self.model_config),
            "tokenizer": self.tokenizer.kind, "vocab_size": self.tokenizer.vocab_size,
            "tokenizer_sha256": self.tokenizer.fingerprint,
            "classes": list(self.splits.class_names)}

  def majority_baseline(self) -> tuple[str, float]:
    return self.splits.majority_baseline()


def _lm_mask(batch):
  """[B, T-1]: 1 where position t predicts a real token t + 1 of a real row."""
  tokens, lengths = batch["tokens"], batch["lengths"]
  positions = jnp.arange(1, tokens.shape[1])[None, :]
  return (positions < lengths[:, None]) * batch["weights"][:, None]


def _total(batch, name: str, local):
  """What the loss divides by: this microbatch's share of the whole batch's `name` under
  gradient accumulation (Task.batch_totals), else the count in this batch."""
  total = batch[f"total/{name}"][0] if f"total/{name}" in batch else local
  return jnp.where(total > 0, total, 1.0)  # a share may be below 1; nothing counted: 0 / 1

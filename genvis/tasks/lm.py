"""Language modelling: next-token cross-entropy on windows of a token stream."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from genvis.data import batching, text_sources, tokenizers
from genvis.errors import UserError
from genvis.models import gpt
from genvis.sampling import text
from genvis.tasks.base import Task


class LanguageModelTask(Task):
  """GPT pre-training on text from `config.data`, tokenized per `config.data.tokenizer`; a run
  continuing another's (`config.init_from`) keeps that run's tokenizer, whose ids its weights
  know."""

  def __init__(self, config, workdir, *, process_index=0, process_count=1):
    super().__init__(config, workdir, process_index=process_index, process_count=process_count)
    if config.eval.num_batches < 0:  # "all" means something only for a finite set
      raise UserError(f"config.eval.num_batches={config.eval.num_batches}: the LM task draws "
                      "random validation windows; give a number of batches")
    train_text, val_text = text_sources.load_text_splits(config.data)
    write = process_index == 0
    fitted = tokenizers.fitted_by_this_run(config, workdir)
    if config.init_from:  # continued pre-training: the ids its weights were trained on
      self.tokenizer = tokenizers.load_for_init_from(
          config.data, config.init_from, workdir, write=write, cover=(train_text, val_text))
    else:
      self.tokenizer = tokenizers.fit_or_load(config.data, train_text, val_text, workdir,
                                              write=write)
    self.model_config = resolve_model_config(config, self.tokenizer, fitted=fitted)
    self.model = gpt.GPT(self.model_config)
    self.seq_len = config.data.seq_len or self.model_config.max_len
    if self.seq_len > self.model_config.max_len:
      raise UserError(f"config.data.seq_len={self.seq_len} > model.max_len="
                      f"{self.model_config.max_len}")
    # Sampling and in-context evaluation keep to seq_len, the positions training filled: with
    # windows shorter than model.max_len the later position embeddings were never trained.
    self.context_name = (f"config.data.seq_len={self.seq_len}"
                         if self.seq_len < self.model_config.max_len
                         else f"model.max_len={self.model_config.max_len}")
    self.prompts, self.prompt_ids = self._checked_prompts()
    self.train_windows = batching.TokenWindows(
        self.tokenizer.encode(train_text), self.seq_len, config.data.batch_size,
        seed=config.seed, name="the training split")
    self.val_windows = batching.TokenWindows(
        self.tokenizer.encode(val_text), self.seq_len, config.data.batch_size,
        seed=config.seed + 1, name="the validation split")

  def batch_spec(self):
    shape = (self.config.data.batch_size, self.seq_len)
    return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32),
            "targets": jax.ShapeDtypeStruct(shape, jnp.int32)}

  def init_variables(self, rng):
    return self.model.init(rng, jnp.zeros((1, self.seq_len), jnp.int32))

  def train_batch(self, step):
    return self.train_windows.batch(step, self.process_index, self.process_count)

  def eval_batches(self):
    for i in range(self.config.eval.num_batches):
      yield self.val_windows.batch(i, self.process_index, self.process_count)

  def loss_fn(self, params, batch, rng, *, train):
    logits = self.model.apply({"params": params}, batch["inputs"], train=train,
                              rngs={"dropout": rng})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    return loss, {"loss": loss}

  def flops_per_step(self, num_params):
    per_token = gpt.flops_per_token(self.model_config, num_params, self.seq_len)
    return per_token * self.tokens_per_step()

  def tokens_per_step(self):
    return self.config.data.batch_size * self.seq_len

  def model_field_defaults(self):
    return gpt.default_fields()

  def metadata(self):
    return {"task": "lm", "model": dataclasses.asdict(self.model_config),
            "tokenizer": self.tokenizer.kind, "vocab_size": self.tokenizer.vocab_size,
            "tokenizer_sha256": self.tokenizer.fingerprint}

  def encode_prompt(self, prompt: str) -> np.ndarray:
    """Token ids of a prompt; an empty prompt starts from a newline / end-of-text token."""
    if not prompt:
      prompt = tokenizers.BPETokenizer.END_OF_TEXT if self.tokenizer.kind == "bpe" else "\n"
    ids = self.tokenizer.encode(prompt)
    if len(ids) == 0:
      raise UserError(f"the prompt {prompt!r} encodes to no tokens")
    return ids

  def _checked_prompts(self) -> tuple[list[str], list[np.ndarray]]:
    """`config.sample`'s prompts and their ids, its settings checked now: a mistake fails
    before training, not at the sample after it."""
    if self.config.sample.num_samples == 0:
      return [], []
    return text.checked_prompts(self.config.sample, self.encode_prompt, self.tokenizer,
                                max_len=self.seq_len, context=self.context_name)

  def sample(self, params, rng):
    """`sample.num_samples` continuations of each prompt, as prompt + continuation."""
    cfg = self.config.sample
    if cfg.num_samples == 0:
      return {}
    prompts = [p for p in self.prompts for _ in range(cfg.num_samples)]
    prompt_ids = [ids for ids in self.prompt_ids for _ in range(cfg.num_samples)]
    continuations = text.complete(
        self.model, params, self.tokenizer, prompt_ids, rng, max_len=self.seq_len,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, stop=text.unescape(cfg.stop), context=self.context_name)
    return {"texts": [p + c for p, c in zip(prompts, continuations)]}


# How many more embedding rows than a BPE fitted by the run itself has a model may have.
# Padding the vocabulary to a multiple of 64 or 128 for faster matmuls (nanoGPT: 50257 ->
# 50304, 47 rows) adds fewer than 128; beyond that the rows are ones no token id ever reads,
# so they never train (GPT-2's 50257 rows over a 2048-token BPE left ~48 k such rows). A
# fixed count rather than a fraction: 1 % of a 300-token BPE is 3 rows.
MAX_PADDING_ROWS = 128


def resolve_model_config(config, tokenizer, *, fitted: bool) -> gpt.GPTConfig:
  """`config.model` as a GPTConfig, with vocab_size=0 filled in from the tokenizer (also in
  `config`, so workdir/config.json and checkpoint comparisons see the real value).

  `fitted`: the tokenizer was fitted by this run for these weights, so a BPE's size may be
  exceeded only by padding (MAX_PADDING_ROWS). A reloaded one (a resume, an imported
  workdir) or config.init_from's comes with weights whose rows its ids already fix. A
  character tokenizer is exempt: its size is the text's alphabet, under a published size's
  embedding by design with the default tok=char (experiments/bench/gpu_gpt2.py times GPT-2's
  50257 rows on uniform ids so)."""
  vocab = tokenizer.vocab_size
  if config.model.vocab_size == 0:
    config.model.vocab_size = vocab
  elif config.model.vocab_size < vocab:
    raise UserError(f"config.model.vocab_size={config.model.vocab_size} is smaller than "
                    f"the tokenizer's vocabulary ({vocab})")
  elif (fitted and tokenizer.kind == "bpe"
        and config.model.vocab_size - vocab >= MAX_PADDING_ROWS):
    raise UserError(_unused_rows_message(config.model.vocab_size, config.data, tokenizer))
  if 0 < config.model.output_vocab_size < vocab:
    raise UserError(f"config.model.output_vocab_size={config.model.output_vocab_size} is "
                    f"smaller than the tokenizer's vocabulary ({vocab}): some targets would "
                    "have no logit")
  return gpt.GPTConfig(**config.model.to_dict())


def _unused_rows_message(model_vocab: int, data_config, tokenizer) -> str:
  vocab = tokenizer.vocab_size
  if data_config.bpe_vocab_size < model_vocab:
    remedy = f"raise config.data.bpe_vocab_size={data_config.bpe_vocab_size} to it"
  else:  # fitting stopped early: the text ran out of pairs to merge
    remedy = "train on a larger text (this one has no more pairs to merge)"
  return (f"config.model.vocab_size={model_vocab}, but the BPE tokenizer fitted for this run "
          f"has {vocab} tokens: {model_vocab - vocab} embedding rows would never be trained "
          f"(padding adds fewer than {MAX_PADDING_ROWS}); set config.model.vocab_size=0 to size "
          f"the embedding to the tokenizer, or {remedy}")

"""GPT language-model pre-training.

  python -m genvis.main --config=configs/gpt_lm.py:size=tiny --workdir=runs/tiny

Variants (comma-separated key=value after the colon):
  size  = any GPT variant in genvis/models/gpt.py: tiny, small (CPU); gpt1; gpt2, gpt2-medium,
          gpt2-large, gpt2-xl; gpt3-small ... gpt3-175b
  data  = embedded (CPython docs, offline), file (set --config.data.path), shakespeare
          (tfds tiny_shakespeare, prepared in --config.data.tfds_data_dir)
  tok   = char | bpe (with a published size: a BPE of its vocab_size, e.g. GPT-2's 50257
          tokens, which needs a large enough text: the embedded corpus gives ~8.8 k, so there
          add --config.model.vocab_size=0 for an embedding of the tokenizer's size)

Reference runs:
- `size=tiny` (default, `make run`): a 4-layer, 128-wide character model on the embedded
  corpus; 2,000 steps in ~2.5 minutes on a 2-core CPU; validation loss ~1.40 nats/char.
- `size=tiny,data=file` with --config.data.path=tinyshakespeare.txt and train.steps=2000 is
  nanoGPT's CPU Shakespeare run (experiments/bench/lm_shakespeare.py): val loss ~1.90
  (nanoGPT's README: 1.88, from 20 validation batches; experiments/results/lm).
- `size=gpt2,tok=bpe`: GPT-2 124M; a GPU or TPU host (bf16: --config.model.dtype=bfloat16),
  on a text large enough for GPT-2's 50257 BPE tokens (or --config.model.vocab_size=0).
"""

from genvis import config_lib
from genvis.models import gpt


def get_config(arg=None):
  variant = config_lib.parse_variant(arg, {"size": "tiny", "data": "embedded", "tok": "char"})
  c = config_lib.base_config()
  c.task = "lm"
  c.model = gpt.config_for(variant["size"])

  c.data = dict(
      source="embedded",  # embedded | file | tfds
      path="",
      tfds_name="tiny_shakespeare",
      tfds_data_dir="",
      tfds_text_key="text",  # the dataset's string feature ("sentence" in glue/sst2)
      tfds_train_split="train",
      tfds_val_split="validation",
      tfds_max_examples=0,  # 0: all
      val_fraction=0.1,  # embedded and file sources: the last 10% of the text
      tokenizer=variant["tok"],
      bpe_vocab_size=2048,
      seq_len=0,  # 0: model.max_len
      batch_size=12,
  )
  if variant["data"] == "file":
    c.data.source = "file"
  elif variant["data"] == "shakespeare":
    c.data.source = "tfds"
  elif variant["data"] != "embedded":
    raise ValueError(f"config variant data={variant['data']!r}: expected embedded, file or "
                     "shakespeare")

  if variant["size"] == "tiny":  # nanoGPT's CPU recipe
    c.train.steps = 2000
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, b2=0.99)
  elif variant["size"] == "small":  # nanoGPT's "baby GPT" Shakespeare recipe
    c.model.dropout = 0.2
    c.model.attention_dropout = 0.2
    c.data.batch_size = 64
    c.train.steps = 5000
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, b2=0.99)
  else:  # GPT-2/3 recipe: 6e-4 peak, 10% floor, 2000 warmup steps
    c.data.batch_size = 32
    c.train.steps = 100_000
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=2000, b2=0.95)
  if variant["tok"] == "bpe":
    # A published size has a fixed embedding (GPT-2's 50257 rows): fit as many tokens, so no
    # row is left untrained (a text too small for that many is refused by the task). The CPU
    # sizes (vocab_size 0) take the tokenizer's size.
    c.data.bpe_vocab_size = c.model.vocab_size or 4096
  return c

"""GPT-1 supervised fine-tuning: a linear head on the last token, L3 = L2 + λ·L1.

Pre-train, then fine-tune from the pre-training run's workdir (its tokenizer comes along):

  python -m genvis.main --config=configs/gpt_lm.py:size=tiny --workdir=runs/lm
  python -m genvis.main --config=configs/gpt_sft.py:size=tiny --workdir=runs/sft \\
      --config.init_from=runs/lm

Without --config.init_from the same model trains from scratch on the labels. These two
commands pre-train on the whole embedded corpus, held-out paragraphs included; for a clean
measurement use experiments/sft_embedded.py, which pre-trains without them.

Variants (comma-separated key=value after the colon):
  size      = the GPT variant of the pre-training run (tiny, small, gpt1, gpt2, ...); its
              layers, width, heads and context must match the checkpoint's, or the run stops
              with a line naming the first differing field
  data      = embedded: which of five parts of the CPython docs a paragraph comes from
              (offline; genvis/data/labelled_text.py:embedded_doc_topics, majority class
              26.6 % of the 402 held-out paragraphs);
              imdb: tfds imdb_reviews (text/label; held-out = test);
              sst2: tfds glue/sst2 (sentence/label; held-out = validation, test is unlabelled);
              tfds datasets must be prepared in --config.data.tfds_data_dir
  lm_weight = λ, the weight of the auxiliary LM loss (GPT-1: 0.5; 0 turns it off)
  tok       = char | bpe (must be the pre-training run's)

Evaluation reports val_accuracy on every held-out example (eval.num_batches=-1).

Reference runs (experiments/sft_embedded.py does all of them and prints a table; 14.5 minutes
on a busy 2-core CPU): the tiny char model pre-trained 2,000 steps (~4 min) on the embedded
corpus *without* the held-out paragraphs, then 500 steps (2.5-5 min each), batch 32, on the
1,231 training paragraphs. Held-out accuracy on all 402 held-out paragraphs, one seed:
  majority class 0.266 | scratch (λ=0) 0.522 | fine-tuned λ=0 0.587 | fine-tuned λ=0.5 0.657
On imdb/sst2 the tiny model's 64-character context reads only the start of a review; use
size=gpt2,tok=bpe from an imported GPT-2 (genvis.convert.hf_gpt, config.init_from) on an
accelerator for meaningful figures there.
"""

from genvis import config_lib
from genvis.models import gpt

_TFDS = {
    "imdb": dict(tfds_name="imdb_reviews", tfds_text_key="text", tfds_heldout_split="test"),
    "sst2": dict(tfds_name="glue/sst2", tfds_text_key="sentence",
                 tfds_heldout_split="validation"),
}


def get_config(arg=None):
  variant = config_lib.parse_variant(
      arg, {"size": "tiny", "data": "embedded", "lm_weight": "0.5", "tok": "char"})
  c = config_lib.base_config()
  c.task = "sft"
  c.model = gpt.config_for(variant["size"])
  c.model.dropout = 0.1  # GPT-1 fine-tuning: dropout 0.1 (also on the classifier input)

  c.data = dict(
      source="embedded",  # embedded | tfds
      heldout_fraction=0.25,  # embedded: share of paragraphs held out (by content hash)
      min_chars=40,  # embedded: shorter paragraphs (headings, code lines) are not examples
      tfds_name="imdb_reviews",
      tfds_data_dir="",
      tfds_text_key="text",
      tfds_label_key="label",
      tfds_train_split="train",
      tfds_heldout_split="test",
      tfds_max_examples=0,  # 0: all
      tokenizer=variant["tok"],
      bpe_vocab_size=2048,
      seq_len=0,  # 0: model.max_len; longer texts keep their first seq_len tokens
      batch_size=32,  # GPT-1
  )
  if variant["data"] in _TFDS:
    c.data.source = "tfds"
    c.data.update(_TFDS[variant["data"]])
  elif variant["data"] != "embedded":
    raise ValueError(f"config variant data={variant['data']!r}: expected embedded, imdb or "
                     "sst2")
  if variant["tok"] == "bpe":  # as configs/gpt_lm.py, so the tokenizers match
    c.data.bpe_vocab_size = c.model.vocab_size or 4096
  c.sft = dict(lm_loss_weight=float(variant["lm_weight"]))

  # GPT-1 fine-tunes with a linear decay after a short warm-up; the peak rate here suits the
  # CPU sizes (GPT-1's 6.25e-5 is for its 117M model).
  c.train.steps = 500
  c.train.log_every = 50
  c.optim.update(lr=5e-4, min_lr=0.0, warmup_steps=50, decay="linear", weight_decay=0.01,
                 b2=0.99)
  if variant["size"] not in ("tiny", "small"):
    c.optim.update(lr=6.25e-5, warmup_steps=20)
  c.eval.update(every=100, num_batches=-1)  # -1: every held-out example
  c.checkpoint.every = 500
  c.sample.num_samples = 0  # a classifier has nothing to sample
  return c

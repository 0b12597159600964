"""A small character GPT pre-trained on in-context-learning episodes, for few-shot evaluation.

  python -m genvis.main --config=configs/gpt_icl.py --workdir=runs/icl
  python -m genvis.eval.few_shot --workdir=runs/icl --shots=0,1,2,4,8

The corpus (genvis/data/icl_corpus.py) is a stream of episodes: a description line ("add the
suffix:") and `word -> output` lines of one randomly drawn mapping (copy, reverse, a random
prefix or suffix, a random letter substitution). Evaluation uses held-out words and held-out
mappings that never occur in training, so the model can only succeed by reading the
demonstrations in its prompt: GPT-3's zero/one/few-shot curve, at small scale.

Reference run (shared 2-core CPU, 6,500 steps of 8 x 192 characters): 10 minutes; train loss
1.18, validation loss 1.15 nats/char. Few-shot accuracy (%) on 100 held-out queries per task:

  task            k=0   k=1   k=2   k=4   k=8
  copy             98    99   100   100   100    the description suffices
  reverse         100    99    99    99    97
  prefix            0    74    86    84    95    the hidden affix is read from the demos
  suffix            0   100   100   100    98
  cipher            0     0     0     0     0    a letter substitution: not learned at this size
  cipher_choice    26    48    60    64    66    ... though it ranks 4 choices above chance (25)
  mean           37.3  70.0  74.2  74.5  76.0

Without the description (--nodescription) the mean is 14.0, 28.7, 63.2, 70.0, 73.7: the
demonstrations make up for it as k grows, the shape of GPT-3's Fig. 1.2.
"""

from genvis import config_lib
from genvis.models import gpt


def get_config(arg=None):
  config_lib.parse_variant(arg, {})
  c = config_lib.base_config()
  c.task = "lm"
  # 4 layers as "tiny", but 64 wide: twice the steps per second of 128 wide on a CPU, which
  # matters more here than width (the skills are attention patterns, not knowledge).
  c.model = gpt.config_for("tiny", d_model=64, max_len=192)
  c.data = dict(
      source="icl",
      icl_train_episodes=40_000,  # ~4.3 M characters; 6,500 steps read ~10 M
      icl_val_episodes=1_000,
      icl_seed=0,
      tokenizer="char",
      bpe_vocab_size=0,  # unused: character tokenizer
      seq_len=0,  # 0: model.max_len
      batch_size=8,  # small batches: more updates per CPU second
  )
  c.train.steps = 6500
  c.optim.update(lr=3e-3, min_lr=3e-4, warmup_steps=100, b2=0.99)
  c.eval.update(every=1000, num_batches=10)
  c.checkpoint.every = 1000
  c.sample.update(num_samples=1, temperature=0.0, max_new_tokens=40,
                  prompt="add the suffix:\nstone -> stonezq\nlamp -> lampzq\nrice -> ")
  return c

"""GPT with a classification head, for supervised fine-tuning as in GPT-1 (Radford et al. 2018).

GPT-1, section 3.2: the input runs through the pre-trained model to obtain the final
transformer block's activation h_l^m at the last token, which is fed to an added linear output
layer with parameters W_y to predict y: P(y | x^1..x^m) = softmax(h_l^m W_y). Only W_y (and a
bias) is new; the LM logits are still returned for the auxiliary loss L1.

`GPTClassifier` subclasses `GPT`, so the backbone's parameters keep exactly the LM's names
(wte, wpe, blocks/..., ln_f, head) and a pre-training checkpoint's parameters are a subtree of
the classifier's; the head is `cls_head/{kernel [embed, classes], bias [classes]}`.
"""

import flax.linen as nn
import jax.numpy as jnp

from genvis.models.gpt import GPT
from genvis.nn import partitioning as P
from genvis.nn.dense import DenseND


class GPTClassifier(GPT):
  """(lm_logits [B, T, vocab], class_logits [B, num_classes]) for padded tokens [B, T].

  `lengths` [B] counts each row's real tokens; the head reads the hidden state at position
  lengths - 1 (causal attention: it has seen the whole text and none of the padding after it).
  A row of length 0 is read at position 0.
  """

  num_classes: int = 2

  @nn.compact
  def __call__(self, tokens, lengths, *, train: bool = False):
    cfg = self.config
    lm_logits, hidden = super().__call__(tokens, train=train, return_hidden=True)
    last = jnp.clip(lengths, 1, tokens.shape[1]) - 1
    features = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    features = P.constrain(features, (P.BATCH, P.EMBED))
    features = nn.Dropout(cfg.dropout, deterministic=not train)(features)  # GPT-1: 0.1
    class_logits = DenseND(features=(self.num_classes,), kernel_axes=(P.EMBED, None),
                           init_std=cfg.init_std, use_bias=True, dtype=cfg.dtype,
                           param_dtype=cfg.param_dtype, name="cls_head")(features)
    return lm_logits, class_logits.astype(jnp.float32)

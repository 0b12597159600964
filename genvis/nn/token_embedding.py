"""Token embeddings that gather in the parameter dtype, then cast (GPT, CLIP's text tower).

Flax's `nn.Embed` casts the whole table to the compute dtype and then gathers, so under
bfloat16 compute the table's gradient is a bfloat16 scatter-add over [vocab, width]: every
token's row is summed in bfloat16, which loses digits once a row gathers many tokens. On
GPT-2 124M (H200, batch 16 x 1024) that scatter also took 18.9 ms of a 56 ms step in XLA:GPU;
the whole step went from 61.0 to 40.2 ms once the rows were gathered from the float32 table
first (the scatter is then float32). Written instead as one_hot(ids)^T @ grad, the gradient
made the step 44.9 ms: slower than the float32 scatter.

`TokenEmbed` is `nn.Embed` with that order and the same parameter ("embedding"), so
checkpoints and converters are unchanged. Its `attend` (a tied output head) returns float32
logits under low-precision compute without rounding them to that precision first
(genvis/nn/float32_logits.py).
"""

import flax.linen as nn
import jax.numpy as jnp

from genvis.nn import float32_logits


class TokenEmbed(nn.Embed):
  """`nn.Embed` that gathers rows of the table in its own dtype, then casts them."""

  def __call__(self, inputs):
    if not jnp.issubdtype(inputs.dtype, jnp.integer):
      raise ValueError(f"token ids must be integers, got {inputs.dtype}")
    rows = jnp.take(self.embedding, inputs, axis=0)
    return rows.astype(self.dtype or self.embedding.dtype)

  def attend(self, query):
    """Logits [..., vocab] in float32: the inner products of `query` with every row."""
    query, embedding = self.promote_dtype(query, self.embedding, dtype=self.dtype)
    return float32_logits.dot_general(query, embedding, (((query.ndim - 1,), (1,)), ((), ())))

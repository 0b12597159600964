"""Prompts from config and files, stop strings, batched text completion."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from genvis.data.tokenizers import CharTokenizer
from genvis.errors import UserError
from genvis.models import gpt
from genvis.sampling import text


def sample_config(**overrides):
  return ml_collections.ConfigDict({"prompt": "", "prompt_file": "", **overrides})


def test_prompts_come_from_the_config_or_a_file(tmp_path):
  assert text.read_prompts(sample_config(prompt="a\\nb")) == ["a\nb"]
  path = tmp_path / "prompts.txt"
  path.write_text("first\n\n  \nsecond\\tline\n", encoding="utf-8")
  assert text.read_prompts(sample_config(prompt_file=str(path))) == ["first", "second\tline"]
  with pytest.raises(UserError, match="prompt_file='/nope.txt': no such file"):
    text.read_prompts(sample_config(prompt_file="/nope.txt"))
  (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
  with pytest.raises(UserError, match="holds no prompts"):
    text.read_prompts(sample_config(prompt_file=str(tmp_path / "empty.txt")))


def test_cut_at_stop_keeps_the_text_before_the_first_stop():
  assert text.cut_at_stop("one\n\ntwo\n\nthree", "\n\n") == "one"
  assert text.cut_at_stop("no stop here", "") == "no stop here"


def test_complete_batches_prompts_of_different_lengths_and_stops():
  tokenizer = CharTokenizer("\nabcdefgh")
  config = gpt.GPTConfig(**gpt.config_for("tiny", vocab_size=tokenizer.vocab_size,
                                          num_layers=1, d_model=16, num_heads=2, max_len=20))
  model = gpt.GPT(config)
  params = nn.meta.unbox(model.init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32)))["params"]
  prompts = [tokenizer.encode(p) for p in ["ab", "abcdefg"]]
  free = text.complete(model, params, tokenizer, prompts, jax.random.key(0), max_len=20,
                       max_new_tokens=8)
  assert [len(c) for c in free] == [8, 8]
  alone = text.complete(model, params, tokenizer, prompts[1:], jax.random.key(0), max_len=20,
                        max_new_tokens=8)
  assert alone[0] == free[1]  # greedy: batching with a shorter prompt changes nothing
  stop = free[0][2]
  stopped = text.complete(model, params, tokenizer, prompts, jax.random.key(0), max_len=20,
                          max_new_tokens=8, stop=stop)
  assert stopped == [c.split(stop, 1)[0] for c in free]
  assert len(stopped[0]) <= 2 < len(free[0])
  with pytest.raises(UserError, match="exceeds the model's context"):
    text.complete(model, params, tokenizer, prompts, jax.random.key(0), max_len=20,
                  max_new_tokens=15)
  # max_new_tokens=0 fills the context after the longest prompt, plus the one token sampled
  # from the last position.
  filled = text.complete(model, params, tokenizer, prompts, jax.random.key(0), max_len=20)
  assert len(filled[1]) == 20 - 7 + 1
  assert np.all([len(c) == 14 for c in filled])
  with pytest.raises(UserError, match="the prompt has 22 tokens, longer than the model's "
                                      r"context \(model.max_len=20\)"):
    text.complete(model, params, tokenizer, [tokenizer.encode("ab" * 11)], jax.random.key(0),
                  max_len=20)

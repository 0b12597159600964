"""Text in, text out: prompts from config, batched generation, stop strings.

`config.sample` gives the prompts (`prompt`, or `prompt_file` with one per line), how many
samples per prompt, and the decoding settings. All prompts go through one `generate` call as
one batch, whatever their lengths. A stop string is cut on the decoded text (it may span
tokens); when it is a single token the loop also ends early once every row has produced it.
A task checks these settings when it is built (`checked_prompts`), so a mistake in them fails
before training, not at the sample after it.
"""

import os

import jax.numpy as jnp
import numpy as np

from genvis.errors import UserError
from genvis.sampling import generate


def unescape(text: str) -> str:
  r"""'\n' and '\t' typed on a command line or in a prompt file stand for the characters."""
  return text.replace("\\n", "\n").replace("\\t", "\t")


def read_prompts(sample_config) -> list[str]:
  """`sample.prompt_file` lines (blank ones skipped), else the single `sample.prompt`."""
  path = sample_config.prompt_file
  if not path:
    return [unescape(sample_config.prompt)]
  if not os.path.isfile(path):
    raise UserError(f"config.sample.prompt_file={path!r}: no such file")
  with open(path, encoding="utf-8") as f:
    prompts = [unescape(line.rstrip("\n")) for line in f if line.strip()]
  if not prompts:
    raise UserError(f"config.sample.prompt_file={path!r} holds no prompts")
  return prompts


def checked_prompts(sample_config, encode, tokenizer, *, max_len: int, context: str = ""
                    ) -> tuple[list[str], list[np.ndarray]]:
  """`sample_config`'s prompts (read_prompts) and their ids (each encoded by `encode`), with
  the settings `complete` will use checked against a context of `max_len` tokens (`context`
  names what sets it, see generate.check_length). Errors name the config key."""
  generate.check_filters(sample_config.temperature, sample_config.top_k, sample_config.top_p)
  key = "config.sample.prompt_file" if sample_config.prompt_file else "config.sample.prompt"
  prompts = read_prompts(sample_config)
  try:
    prompt_ids = [encode(prompt) for prompt in prompts]
  except UserError as e:
    raise UserError(f"{key}: {e}") from None
  if sample_config.stop:
    try:
      tokenizer.encode(unescape(sample_config.stop))
    except UserError as e:
      raise UserError(f"config.sample.stop={sample_config.stop!r}: {e}") from None
  longest = max(len(ids) for ids in prompt_ids)
  try:
    generate.check_length(longest, sample_config.max_new_tokens or max_len - longest + 1,
                          max_len, context)
  except UserError as e:
    raise UserError(f"{key}: {e}") from None
  return prompts, prompt_ids


def pad_prompts(prompt_ids: list[np.ndarray], length: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded [rows, length] ids (default length: the longest) and each row's length."""
  lengths = np.array([len(ids) for ids in prompt_ids], np.int32)
  padded = np.zeros((len(prompt_ids), length or lengths.max()), np.int32)
  for row, ids in enumerate(prompt_ids):
    padded[row, :len(ids)] = ids
  return padded, lengths


def cut_at_stop(text: str, stop: str) -> str:
  return text.split(stop, 1)[0] if stop else text


def complete(model, params, tokenizer, prompt_ids: list[np.ndarray], rng, *, max_len: int,
             max_new_tokens: int = 0, temperature=0.0, top_k=0, top_p=1.0, stop: str = "",
             context: str = "") -> list[str]:
  """The decoded continuation of each prompt (prompt excluded), cut at `stop`.

  max_len is the context sampling may fill (`context` names what sets it, for errors);
  max_new_tokens=0 fills it after the longest prompt (and samples one more token from the
  last position).
  """
  generate.check_filters(temperature, top_k, top_p)
  padded, lengths = pad_prompts(prompt_ids)
  max_new_tokens = max_new_tokens or max_len - padded.shape[1] + 1
  generate.check_length(padded.shape[1], max_new_tokens, max_len, context)
  stop_ids = tokenizer.encode(stop) if stop else []
  tokens = generate.generate(
      model, params, jnp.asarray(padded), rng, max_new_tokens=max_new_tokens,
      temperature=temperature, top_k=top_k, top_p=top_p, prompt_lengths=jnp.asarray(lengths),
      stop_token=int(stop_ids[0]) if len(stop_ids) == 1 else -1)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  tokens = multihost_utils.process_allgather(tokens, tiled=True)  # rows may be sharded
  new = generate.continuations(tokens, lengths, max_new_tokens)
  return [cut_at_stop(tokenizer.decode(ids), stop) for ids in new]

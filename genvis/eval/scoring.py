"""Scoring in context: completion log-likelihoods (multiple choice) and greedy exact match.

Multiple choice (GPT-3 §2.4): each choice, followed by the answer delimiter, is a completion
of the prompt; its score is the summed log-probability of its tokens given the prompt,
optionally divided by its length in tokens or characters ("length-normalised"), and the
highest-scoring choice is the model's answer. Scoring the delimiter too is what tells "ab"
from "abc" when one choice is a prefix of another.

Free-form: greedy decoding from the prompt until the delimiter; the answer is correct when the
text before the delimiter (or a BPE end-of-text token) equals the expected answer, both
stripped of surrounding spaces.

The whitespace between a prompt and its answer (`answer_prefix`, prompts.py) starts each
completion, as in GPT-3, except with a character tokenizer (`place_answer_prefix`).

Both run in fixed-shape batches: sequences are padded on the right to a bucket length (a
multiple of `bucket`) and the batch to `batch_size` rows, so a model compiles once per
bucket, not once per example. Causal attention makes the padding after a sequence invisible
to it. Everything here takes a Linen `model` with `apply({"params": params}, tokens)` and, for
generation, the KV-cache protocol of genvis/sampling/generate.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from genvis.errors import UserError
from genvis.sampling import generate as generate_lib
from genvis.sampling import text as text_lib

NORMALIZATIONS = ("none", "token", "char")


def _bucket_length(length: int, bucket: int, limit: int) -> int:
  return min(-(-length // bucket) * bucket, limit)


def _batches(items: list[int], batch_size: int):
  for start in range(0, len(items), batch_size):
    yield items[start:start + batch_size]


@functools.partial(jax.jit, static_argnames=("model",))
def _completion_log_probs(model, params, inputs, targets, mask):
  """Per row: the sum of log p(target) over the masked positions."""
  logits = model.apply({"params": params}, inputs)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  target_log_probs = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return jnp.sum(target_log_probs * mask, axis=-1)


def completion_log_likelihoods(model, params, prompts: list[np.ndarray],
                               completions: list[np.ndarray], *, max_len: int,
                               batch_size: int = 32, bucket: int = 32) -> np.ndarray:
  """log p(completion_i | prompt_i), summed over the completion's tokens, for every pair."""
  sequences = [np.concatenate([p, c]).astype(np.int32) for p, c in zip(prompts, completions)]
  for sequence, prompt, completion in zip(sequences, prompts, completions):
    if len(prompt) == 0:
      raise UserError("a prompt encodes to no tokens: nothing to condition the choices on")
    if len(completion) == 0:
      raise UserError("a multiple-choice completion encodes to no tokens")
    if len(sequence) - 1 > max_len:
      raise UserError(f"a prompt + completion of {len(sequence)} tokens does not fit the "
                      f"model's context (model.max_len={max_len}); use fewer shots")
  by_bucket = {}
  for i, sequence in enumerate(sequences):
    by_bucket.setdefault(_bucket_length(len(sequence) - 1, bucket, max_len), []).append(i)
  scores = np.zeros(len(sequences), np.float64)
  for length, indices in by_bucket.items():
    for rows in _batches(indices, batch_size):
      tokens = np.zeros((batch_size, length + 1), np.int32)
      mask = np.zeros((batch_size, length), np.float32)
      for row, i in enumerate(rows):
        tokens[row, :len(sequences[i])] = sequences[i]
        # Position t predicts token t + 1: the completion's tokens are predicted from the
        # prompt's last position up to the sequence's second-to-last.
        mask[row, len(prompts[i]) - 1:len(sequences[i]) - 1] = 1.0
      sums = _completion_log_probs(model, params, tokens[:, :-1], tokens[:, 1:], mask)
      scores[rows] = np.asarray(sums)[:len(rows)]
  return scores


def choose(scores: np.ndarray, lengths: np.ndarray, normalize: str) -> int:
  """The index of the best choice by summed or length-normalised log-likelihood."""
  if normalize not in NORMALIZATIONS:
    raise UserError(f"--normalize={normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
  return int(np.argmax(scores if normalize == "none" else scores / lengths))


def place_answer_prefix(tokenizer, answer_prefix: str) -> tuple[str, str]:
  """(what each prompt ends with, what each completion starts with): where the whitespace
  between a prompt and its answer is fed.

  Byte-level BPE merges a space into the word after it (" qgrb" is " q" "g" "r" "b"), so a
  prompt ending in the space would end in a lone " " token, rare in the training text, and
  the answer would start with a token that follows a space there only by exception: GPT-3's
  convention starts each completion with the space, scored (or generated) with the answer.
  A character tokenizer encodes the space as its own token either way; it stays in the
  prompt, fed and not scored, so character-level scores and generations are unchanged.
  """
  if getattr(tokenizer, "kind", None) == "char":
    return answer_prefix, ""
  return "", answer_prefix


def fed_prompt(tokenizer, prompt: str, answer_prefix: str) -> str:
  """The prompt as the model reads it (place_answer_prefix)."""
  return prompt + place_answer_prefix(tokenizer, answer_prefix)[0]


def fed_completion(tokenizer, answer: str, answer_prefix: str, delimiter: str) -> str:
  """An answer's completion as it is scored or generated: it ends with the delimiter."""
  return place_answer_prefix(tokenizer, answer_prefix)[1] + answer + delimiter


def multiple_choice_predictions(model, params, tokenizer, prompts: list[str],
                                choices: list[tuple[str, ...]], *, delimiter: str,
                                answer_prefix: str = "", normalize: str = "none",
                                max_len: int, batch_size: int = 32,
                                bucket: int = 32) -> list[int]:
  """For each prompt, the index of the choice the model scores highest. A choice's
  completion is answer_prefix + choice + delimiter (see place_answer_prefix)."""
  pairs_prompt, pairs_completion, owner, lengths = [], [], [], []
  for i, (prompt, options) in enumerate(zip(prompts, choices)):
    prompt_ids = tokenizer.encode(fed_prompt(tokenizer, prompt, answer_prefix))
    for option in options:
      completion = fed_completion(tokenizer, option, answer_prefix, delimiter)
      completion_ids = tokenizer.encode(completion)
      pairs_prompt.append(prompt_ids)
      pairs_completion.append(completion_ids)
      owner.append(i)
      lengths.append(len(completion_ids) if normalize == "token" else len(completion))
  scores = completion_log_likelihoods(model, params, pairs_prompt, pairs_completion,
                                      max_len=max_len, batch_size=batch_size, bucket=bucket)
  owner, lengths = np.asarray(owner), np.asarray(lengths, np.float64)
  return [choose(scores[owner == i], lengths[owner == i], normalize) for i in range(len(prompts))]


def greedy_continuations(model, params, prompts: list[np.ndarray], *, max_new_tokens: int,
                         max_len: int, stop_token: int = -1, batch_size: int = 32,
                         bucket: int = 32) -> list[np.ndarray]:
  """Each prompt's greedy continuation (`max_new_tokens` ids; after a stop token, filler).

  Prompts of different lengths share a batch through generate's `prompt_lengths`; the padded
  length is a bucket, so generation compiles once per bucket.
  """
  for prompt in prompts:
    generate_lib.check_length(len(prompt), max_new_tokens, max_len)
  by_bucket = {}
  for i, prompt in enumerate(prompts):
    # The last new token is never fed back: prompt + max_new_tokens - 1 positions.
    padded = _bucket_length(len(prompt), bucket, max_len - max_new_tokens + 1)
    by_bucket.setdefault(padded, []).append(i)
  outputs = [None] * len(prompts)
  for length, indices in by_bucket.items():
    for rows in _batches(indices, batch_size):
      # Spare rows repeat the first prompt: a real prompt, whose output is dropped.
      filled = rows + [rows[0]] * (batch_size - len(rows))
      tokens, lengths = text_lib.pad_prompts([prompts[i] for i in filled], length)
      generated = generate_lib.generate(
          model, params, jnp.asarray(tokens), jax.random.key(0), max_new_tokens=max_new_tokens,
          temperature=0.0, prompt_lengths=jnp.asarray(lengths), stop_token=stop_token)
      new = generate_lib.continuations(generated, lengths, max_new_tokens)
      for row, i in enumerate(rows):
        outputs[i] = new[row]
  return outputs


def exact_match_predictions(model, params, tokenizer, prompts: list[str], answers: list[str],
                            *, delimiter: str, answer_prefix: str = "", max_len: int,
                            batch_size: int = 32, bucket: int = 32) -> list[str]:
  """Each prompt's greedy answer: the generated text up to the delimiter, stripped.

  The model generates as many tokens as the longest answer_prefix + answer + delimiter needs,
  so an answer that runs on past the expected one is caught as wrong.
  """
  prompt_ids = [tokenizer.encode(fed_prompt(tokenizer, p, answer_prefix)) for p in prompts]
  max_new_tokens = max(len(tokenizer.encode(fed_completion(tokenizer, a, answer_prefix,
                                                           delimiter))) for a in answers)
  delimiter_ids = tokenizer.encode(delimiter) if delimiter else []
  stop_token = int(delimiter_ids[0]) if len(delimiter_ids) == 1 else -1
  continuations = greedy_continuations(model, params, prompt_ids, max_new_tokens=max_new_tokens,
                                       max_len=max_len, stop_token=stop_token,
                                       batch_size=batch_size, bucket=bucket)
  texts = [tokenizer.decode(c) for c in continuations]
  # A document end ends the answer too (decoding keeps special tokens).
  end_of_text = getattr(tokenizer, "END_OF_TEXT", "")
  texts = [t.split(end_of_text)[0] if end_of_text else t for t in texts]
  return [(t.split(delimiter)[0] if delimiter else t).strip() for t in texts]

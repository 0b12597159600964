"""Text sources, tokenizers and deterministic batching."""

import ml_collections
import numpy as np
import pytest

from conftest import assert_one_line_error
from genvis.data import batching, text_sources, tokenizers
from genvis.errors import UserError


def data_config(**overrides):
  return ml_collections.ConfigDict({
      "source": "embedded", "path": "", "val_fraction": 0.1, "tokenizer": "char",
      "bpe_vocab_size": 300, **overrides})


def test_embedded_corpus_is_the_cpython_docs_and_splits_90_10():
  text = text_sources.embedded_corpus()
  assert len(text) > 400_000 and "assignment statement" in text.lower()
  train, val = text_sources.load_text_splits(data_config())
  assert train + val == text and abs(len(val) / len(text) - 0.1) < 1e-3


def test_file_source_and_its_errors(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("abcdefghij" * 10, encoding="utf-8")
  train, val = text_sources.load_text_splits(data_config(source="file", path=str(path)))
  assert len(train) == 90 and len(val) == 10
  with pytest.raises(UserError, match="config.data.path=.*no such file"):
    text_sources.load_text_splits(data_config(source="file", path=str(tmp_path / "nope")))
  (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00abc")
  with pytest.raises(UserError, match="is not UTF-8"):
    text_sources.load_text_splits(data_config(source="file", path=str(tmp_path / "bad.txt")))
  with pytest.raises(UserError, match="config.data.source='nope'"):
    text_sources.load_text_splits(data_config(source="nope"))


@pytest.mark.parametrize("key,value,source,owner", [
    ("path", "corpus.txt", "embedded", "file"),
    ("path", "corpus.txt", "tfds", "file"),
    ("tfds_data_dir", "/data/tfds", "embedded", "tfds"),
    ("tfds_data_dir", "/data/tfds", "file", "tfds"),
])
def test_a_key_only_another_source_reads_is_refused_not_ignored(key, value, source, owner):
  """data.path without the file source used to train on the embedded corpus, silently."""
  with pytest.raises(UserError) as excinfo:
    text_sources.load_text_splits(data_config(**{"source": source, "path": "",
                                                 "tfds_data_dir": "", key: value}))
  assert_one_line_error(excinfo, f"config.data.{key}={value!r}",
                        f"config.data.source={source!r}", f"--config.data.source={owner}")


def test_char_tokenizer_round_trips_and_reloads(tmp_path):
  tokenizer = tokenizers.fit(data_config(), "hello world", "!")
  assert tokenizer.vocab_size == len(set("hello world!"))
  ids = tokenizer.encode("hello world!")
  assert tokenizer.decode(ids) == "hello world!"
  tokenizer.save(str(tmp_path / "t.json"))
  np.testing.assert_array_equal(tokenizers.load(str(tmp_path / "t.json")).encode("hello"),
                                tokenizer.encode("hello"))
  with pytest.raises(UserError, match="'Z' is not in the tokenizer"):
    tokenizer.encode("Z")


def test_bpe_tokenizer_has_the_requested_vocab_and_round_trips(tmp_path):
  text = text_sources.embedded_corpus()[:50_000]
  tokenizer = tokenizers.fit(data_config(tokenizer="bpe", bpe_vocab_size=400), text)
  assert tokenizer.vocab_size == 400
  sample = "The assignment statement, naïve café ✓\n"
  ids = tokenizer.encode(sample)
  assert tokenizer.decode(ids) == sample  # byte level: nothing is out of vocabulary
  assert len(ids) < len(sample.encode("utf-8"))  # merges compress
  tokenizer.save(str(tmp_path / "bpe.json"))
  np.testing.assert_array_equal(tokenizers.load(str(tmp_path / "bpe.json")).encode(sample), ids)


def test_fit_or_load_prefers_the_workdirs_tokenizer(tmp_path):
  first = tokenizers.fit_or_load(data_config(), "abc", "", str(tmp_path))
  again = tokenizers.fit_or_load(data_config(), "ba", "", str(tmp_path))  # would fit "ab"
  assert again.chars == first.chars == "abc"


def test_batches_are_a_pure_function_of_seed_and_step():
  tokens = np.arange(1000, dtype=np.int32)
  windows = batching.TokenWindows(tokens, seq_len=8, global_batch=6, seed=3)
  a, b = windows.batch(7), batching.TokenWindows(tokens, 8, 6, seed=3).batch(7)
  np.testing.assert_array_equal(a["inputs"], b["inputs"])
  np.testing.assert_array_equal(a["targets"], a["inputs"] + 1)  # next-token targets
  assert not np.array_equal(windows.batch(8)["inputs"], a["inputs"])
  assert not np.array_equal(batching.TokenWindows(tokens, 8, 6, seed=4).batch(7)["inputs"],
                            a["inputs"])


def test_each_process_gets_its_own_rows_of_the_global_batch():
  windows = batching.TokenWindows(np.arange(500, dtype=np.int32), 4, 6, seed=0)
  whole = windows.batch(2)["inputs"]
  parts = [windows.batch(2, process_index=p, process_count=3)["inputs"] for p in range(3)]
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  with pytest.raises(UserError, match="batch_size=6 is not divisible by the 4 processes"):
    windows.batch(2, process_index=0, process_count=4)


def test_too_little_text_is_a_clear_error():
  with pytest.raises(UserError, match="fewer than one window"):
    batching.TokenWindows(np.arange(5, dtype=np.int32), 8, 2, seed=0, name="the training split")


def test_a_workdir_tokenizer_of_another_kind_is_refused(tmp_path):
  tokenizers.fit_or_load(data_config(), "abc", "", str(tmp_path))
  with pytest.raises(UserError, match="is a 'char' tokenizer but config.data.tokenizer='bpe'"):
    tokenizers.fit_or_load(data_config(tokenizer="bpe"), "abc", "", str(tmp_path))


def test_a_bpe_tokenizer_that_ran_out_of_pairs_below_bpe_vocab_size_reloads(tmp_path, caplog):
  config = data_config(tokenizer="bpe", bpe_vocab_size=2000)
  text = "hello world, this is a tiny corpus.\n" * 50
  first = tokenizers.fit_or_load(config, text, "", str(tmp_path))
  assert first.vocab_size < 2000  # the trainer stopped merging: no pairs were left
  with caplog.at_level("WARNING"):
    again = tokenizers.fit_or_load(config, text, "", str(tmp_path))  # a resume
  assert again.fingerprint == first.fingerprint
  # It cannot tell this from a bpe_vocab_size raised since, so it says what it uses.
  assert f"has {first.vocab_size} tokens, fewer than config.data.bpe_vocab_size=2000" in caplog.text
  smaller = data_config(tokenizer="bpe", bpe_vocab_size=first.vocab_size - 1)
  with pytest.raises(UserError) as excinfo:
    tokenizers.fit_or_load(smaller, text, "", str(tmp_path))
  assert_one_line_error(excinfo, str(tmp_path / tokenizers.FILENAME),
                        f"has {first.vocab_size} tokens, more than config.data.bpe_vocab_size="
                        f"{first.vocab_size - 1}")


def test_a_resumed_char_tokenizer_must_cover_the_text_of_config_data_path(tmp_path):
  tokenizers.fit_or_load(data_config(source="file", path="a.txt"), "abc", "d", str(tmp_path))
  again = tokenizers.fit_or_load(data_config(source="file", path="a.txt"), "ab", "", str(tmp_path))
  assert again.chars == "abcd"  # text it covers is fine
  with pytest.raises(UserError) as excinfo:
    tokenizers.fit_or_load(data_config(source="file", path="b.txt"), "abz", "", str(tmp_path))
  assert_one_line_error(excinfo, str(tmp_path / tokenizers.FILENAME),
                        "config.data.path='b.txt'", "'z'", "new workdir")


def test_the_fingerprint_follows_what_each_id_means(tmp_path):
  chars = tokenizers.CharTokenizer("abc")
  assert tokenizers.CharTokenizer("abc").fingerprint == chars.fingerprint
  assert tokenizers.CharTokenizer("bac").fingerprint != chars.fingerprint  # same size
  config = data_config(tokenizer="bpe", bpe_vocab_size=300)
  corpus = text_sources.embedded_corpus()
  bpe = tokenizers.fit(config, corpus[:20_000])
  bpe.save(str(tmp_path / "bpe.json"))
  assert tokenizers.load(str(tmp_path / "bpe.json")).fingerprint == bpe.fingerprint
  other = tokenizers.fit(config, corpus[20_000:40_000])
  assert other.vocab_size == bpe.vocab_size and other.fingerprint != bpe.fingerprint


def test_init_from_takes_the_source_runs_tokenizer_and_its_config_keys(tmp_path):
  source = tmp_path / "source"
  source.mkdir()
  fitted = tokenizers.fit_or_load(data_config(tokenizer="bpe"), "the cat sat\n" * 20, "",
                                  str(source))
  config = data_config()  # asks for a char tokenizer: the weights decide
  own = tmp_path / "run"
  own.mkdir()
  init_from = str(source / "checkpoints" / "7")
  tokenizer = tokenizers.load_for_init_from(config, init_from, str(own), cover=("ab",))
  assert tokenizer.fingerprint == fitted.fingerprint
  assert (config.tokenizer, config.bpe_vocab_size) == ("bpe", fitted.vocab_size)
  assert (own / tokenizers.FILENAME).read_bytes() == (source / tokenizers.FILENAME).read_bytes()
  with pytest.raises(UserError) as excinfo:
    tokenizers.load_for_init_from(data_config(), str(tmp_path), None)
  assert_one_line_error(excinfo, "config.init_from=", "no tokenizer.json")


def test_init_from_a_char_tokenizer_must_cover_the_text(tmp_path):
  tokenizers.fit_or_load(data_config(), "abc", "", str(tmp_path))
  with pytest.raises(UserError) as excinfo:
    tokenizers.load_for_init_from(data_config(source="file", path="b.txt"), str(tmp_path),
                                  None, cover=("abz", ""))
  assert_one_line_error(excinfo, str(tmp_path / tokenizers.FILENAME),
                        "config.data.path='b.txt'", "'z'", "config.init_from")

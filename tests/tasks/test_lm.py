"""The language-modelling task: its checks before compiling, its tokenizer and metadata."""

import pytest

from conftest import assert_one_line_error, tiny_config
from genvis.data import tokenizers
from genvis.errors import UserError
from genvis.tasks.lm import LanguageModelTask
from genvis.train.trainer import Trainer


def file_config(path, **overrides):
  return tiny_config(data__source="file", data__path=str(path), **overrides)


def test_eval_num_batches_below_zero_is_refused_when_the_task_is_built(tmp_path):
  with pytest.raises(UserError) as excinfo:
    LanguageModelTask(tiny_config(eval__num_batches=-1), str(tmp_path))
  assert_one_line_error(excinfo, "config.eval.num_batches=-1", "number of batches")


def test_init_from_uses_the_source_runs_tokenizer_not_one_fitted_on_this_text(tmp_path):
  (tmp_path / "a.txt").write_text("abcdefgh \n" * 500, encoding="utf-8")
  (tmp_path / "b.txt").write_text("bad cafe\n" * 500, encoding="utf-8")  # a subset of a's
  source = LanguageModelTask(file_config(tmp_path / "a.txt"), str(tmp_path / "a"))
  config = file_config(tmp_path / "b.txt", init_from=str(tmp_path / "a"))
  task = LanguageModelTask(config, str(tmp_path / "b"))
  assert task.tokenizer.chars == source.tokenizer.chars == "\n abcdefgh"
  assert task.metadata()["tokenizer_sha256"] == source.metadata()["tokenizer_sha256"]
  assert ((tmp_path / "b" / tokenizers.FILENAME).read_bytes()
          == (tmp_path / "a" / tokenizers.FILENAME).read_bytes())  # a resume reloads it


def test_init_from_text_with_characters_the_source_lacks_is_one_line(tmp_path):
  (tmp_path / "a.txt").write_text("abcdefgh \n" * 500, encoding="utf-8")
  (tmp_path / "z.txt").write_text("stuvwxyz\n" * 500, encoding="utf-8")
  LanguageModelTask(file_config(tmp_path / "a.txt"), str(tmp_path / "a"))
  with pytest.raises(UserError) as excinfo:
    LanguageModelTask(file_config(tmp_path / "z.txt", init_from=str(tmp_path / "a")),
                      str(tmp_path / "z"))
  assert_one_line_error(excinfo, str(tmp_path / "a" / tokenizers.FILENAME),
                        f"config.data.path='{tmp_path / 'z.txt'}'", "config.init_from")


@pytest.fixture(scope="module", name="trainer")
def fixture_trainer(tmp_path_factory):
  return Trainer(tiny_config(), str(tmp_path_factory.mktemp("lm")))


def test_a_checkpoint_of_another_id_mapping_of_the_same_size_is_refused(trainer):
  saved = trainer.task.metadata()
  assert saved["tokenizer_sha256"] == trainer.task.tokenizer.fingerprint
  chars = trainer.task.tokenizer.chars
  saved["tokenizer_sha256"] = tokenizers.CharTokenizer(chars[::-1]).fingerprint
  for same_task in (True, False):  # a resume; config.init_from
    with pytest.raises(UserError) as excinfo:
      trainer.check_checkpoint_meta(saved, "old", same_task=same_task)
    assert_one_line_error(excinfo, "tokenizer_sha256=")


def test_a_checkpoint_older_than_the_tokenizer_fingerprint_is_accepted(trainer):
  older = trainer.task.metadata()
  del older["tokenizer_sha256"]  # written before the fingerprint was recorded
  trainer.check_checkpoint_meta(older, "old", same_task=False)  # config.init_from
  trainer.check_checkpoint_meta(older, "old")  # a resume

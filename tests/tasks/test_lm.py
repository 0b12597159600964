"""The language-modelling task: its checks before compiling, its tokenizer and metadata, and
the context it samples in."""

import os

import flax.linen as nn
import jax
import pytest

from conftest import REPO, assert_one_line_error, tiny_config
from genvis import config_lib
from genvis.convert import lm_workdir
from genvis.data import tokenizers
from genvis.errors import UserError
from genvis.tasks import lm
from genvis.tasks.lm import LanguageModelTask
from genvis.train.trainer import Trainer

UNKNOWN = "\ue000"  # a private-use character: not in the embedded corpus's vocabulary


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


@pytest.mark.parametrize("spec,vocab", [("gpt_lm.py:size=gpt2,tok=bpe", 50257),
                                        ("gpt_lm.py:size=gpt1,tok=bpe", 40478),
                                        ("gpt_sft.py:size=gpt2,tok=bpe", 50257),
                                        ("gpt_lm.py:size=tiny,tok=bpe", 0)])
def test_a_published_size_fits_a_bpe_with_as_many_tokens_as_its_embedding_has_rows(spec, vocab):
  config = config_lib.load_config(os.path.join(REPO, "configs", spec))
  assert config.model.vocab_size == vocab
  assert config.data.bpe_vocab_size == (vocab or 4096)  # tiny: the tokenizer sizes the model


def test_a_vocab_beyond_padding_of_a_bpe_fitted_here_is_refused(tmp_path):
  bpe = dict(data__tokenizer="bpe", data__bpe_vocab_size=300)
  fitted = LanguageModelTask(tiny_config(**bpe), str(tmp_path)).tokenizer.vocab_size
  padded = fitted + lm.MAX_PADDING_ROWS - 1  # e.g. nanoGPT's 50257 -> 50304
  task = LanguageModelTask(tiny_config(**bpe, model__vocab_size=padded), None)
  assert task.model_config.vocab_size == padded
  with pytest.raises(UserError) as excinfo:
    LanguageModelTask(tiny_config(**bpe, model__vocab_size=padded + 1), None)
  assert_one_line_error(excinfo, f"config.model.vocab_size={padded + 1}",
                        f"has {fitted} tokens", "config.model.vocab_size=0",
                        "raise config.data.bpe_vocab_size=300")
  # A workdir's own tokenizer (a resume; an imported GPT-2 written by genvis.convert) comes
  # with weights whose rows it already fixes: not refused.
  resumed = LanguageModelTask(tiny_config(**bpe, model__vocab_size=fitted + 1000),
                              str(tmp_path))
  assert resumed.model_config.vocab_size == fitted + 1000
  # Nor is a character tokenizer, whose size is the text's alphabet (gpu_gpt2.py's smoke run).
  assert LanguageModelTask(tiny_config(model__vocab_size=512), None).tokenizer.vocab_size < 384


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


# ------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("overrides,fragments", [
    ({"sample__top_p": 0.0}, ["config.sample.top_p=0.0"]),
    ({"sample__top_p": 1.5}, ["config.sample.top_p=1.5"]),
    ({"sample__temperature": -0.5}, ["config.sample.temperature=-0.5 must be >= 0"]),
    ({"sample__top_k": -1}, ["config.sample.top_k=-1 must be >= 0"]),
    ({"sample__prompt": "x" * 20}, ["config.sample.prompt: ", "20 tokens, longer",
                                    "(model.max_len=16)"]),
    ({"sample__prompt": "x" * 6, "data__seq_len": 4},
     ["config.sample.prompt: ", "6 tokens, longer", "(config.data.seq_len=4)"]),
    ({"sample__prompt": "ab", "sample__max_new_tokens": 16},
     ["config.sample.prompt: ", "config.sample.max_new_tokens=16 exceeds"]),
    ({"sample__max_new_tokens": -1}, ["config.sample.max_new_tokens=-1"]),
    ({"sample__prompt": f"a{UNKNOWN}"}, ["config.sample.prompt: ", f"{UNKNOWN!r} is not in"]),
    ({"sample__stop": UNKNOWN}, ["config.sample.stop=", f"{UNKNOWN!r} is not in"]),
])
def test_bad_sample_settings_fail_when_the_task_is_built(tmp_path, overrides, fragments):
  with pytest.raises(UserError) as excinfo:
    LanguageModelTask(tiny_config(**overrides), str(tmp_path))
  assert_one_line_error(excinfo, *fragments)


def test_a_bad_prompt_file_fails_before_the_trainer_compiles_or_trains(tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text(f"fine\nnot {UNKNOWN}\n", encoding="utf-8")
  workdir = tmp_path / "run"
  with pytest.raises(UserError) as excinfo:
    Trainer(tiny_config(sample__prompt_file=str(prompts)), str(workdir))
  assert_one_line_error(excinfo, "config.sample.prompt_file: ", f"{UNKNOWN!r} is not in")
  assert not (workdir / "checkpoints").exists()
  # Without samples the settings are never used, so nothing is checked.
  LanguageModelTask(tiny_config(sample__prompt_file=str(prompts), sample__num_samples=0,
                                sample__top_p=0.0), str(tmp_path / "quiet"))


def test_sampling_fills_the_trained_context_not_model_max_len(tmp_path):
  task = LanguageModelTask(tiny_config(data__seq_len=8, sample__prompt="The",
                                       sample__max_new_tokens=0), str(tmp_path))
  assert task.model_config.max_len == 16
  params = nn.meta.unbox(jax.jit(task.init_variables)(jax.random.key(0)))["params"]
  (sampled,) = task.sample(params, jax.random.key(1))["texts"]
  # Positions 0-7 read the prompt's 3 characters and 5 new ones; the 6th new one is sampled
  # from position 7 and never read.
  assert sampled.startswith("The") and len(sampled) == 3 + (8 - 3 + 1)
  assert task.context_name == "config.data.seq_len=8"  # what its errors name


def test_imported_gpt2_keeps_its_full_context():
  # An imported checkpoint's workdir config (genvis/convert/lm_workdir.py) leaves seq_len at
  # 0, i.e. model.max_len: GPT-2 was trained on all 1024 positions.
  config = config_lib.load_config(lm_workdir.default_spec("gpt2"))
  assert config.data.seq_len == 0 and config.model.max_len == 1024
  task = LanguageModelTask(tiny_config(sample__num_samples=0), None)
  assert task.seq_len == task.model_config.max_len == 16
  assert task.context_name == "model.max_len=16"

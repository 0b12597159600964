"""In-context evaluation: tasks, JSONL, prompts, likelihood and exact-match scoring, runner."""

import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from genvis import config_lib
from genvis.data import icl_corpus
from genvis.data.tokenizers import BPETokenizer, CharTokenizer
from genvis.errors import UserError
from genvis.eval import few_shot, few_shot_tasks, prompts, scoring
from genvis.eval.few_shot_tasks import Example, FewShotTask
from genvis.models import gpt

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------ tasks and prompts
def toy_task():
  pool = tuple(Example(f"q{i}", f"a{i}") for i in range(6)) + (Example("q0", "dup"),)
  return FewShotTask("toy", "do it:", pool, (Example("q0", "a0"), Example("q9", "a9")))


def test_prompts_hold_k_demonstrations_never_the_query_and_are_seeded():
  task = toy_task()
  for k in (0, 1, 3, 5):
    for i, prompt in enumerate(prompts.few_shot_prompts(task, k, seed=0)):
      lines = prompt.split("\n")
      assert lines[0] == "do it:" and lines[-1] == f"{task.queries[i].query} ->"
      demos = lines[1:-1]
      assert len(demos) == k
      assert not any(d.startswith(task.queries[i].query + " ") for d in demos)
  # Query q0 has two pool entries with its text: with 7 in the pool only 5 remain.
  with pytest.raises(UserError, match="k=6 demonstrations.*only 5 examples other than"):
    prompts.demonstration_indices(task, 0, 6, seed=0)
  assert prompts.few_shot_prompts(task, 3, seed=1) == prompts.few_shot_prompts(task, 3, seed=1)
  assert prompts.few_shot_prompts(task, 3, seed=1) != prompts.few_shot_prompts(task, 3, seed=2)
  # Nested: the k=2 demonstrations are the first two of the k=4 ones.
  assert (prompts.demonstration_indices(task, 1, 4, seed=3)[:2]
          == prompts.demonstration_indices(task, 1, 2, seed=3))
  no_description = prompts.PromptFormat(include_description=False)
  assert prompts.few_shot_prompts(task, 1, 0, no_description)[1].count("\n") == 1


def test_builtin_prompt_is_the_start_of_a_training_episode():
  task = few_shot_tasks.builtin_task("suffix", num_queries=3)
  demos = [task.demonstrations[j] for j in prompts.demonstration_indices(task, 0, 2, seed=0)]
  fmt = prompts.PromptFormat()
  prompt = prompts.build_prompt(task.description, demos, task.queries[0], fmt)
  mapping = icl_corpus.Mapping("suffix", table=task.queries[0].answer[-2:])
  episode = icl_corpus.render_episode(mapping, [d.query for d in demos] + [task.queries[0].query])
  # GPT-3's convention: the prompt stops before the separator's space, which starts the answer.
  assert prompt.endswith(" ->") and fmt.answer_prefix == " "
  assert episode.startswith(prompt)
  assert episode[len(prompt):] == fmt.answer_prefix + task.queries[0].answer + "\n"


def test_builtin_tasks_are_deterministic_and_held_out_of_training():
  for name in few_shot_tasks.BUILTIN_TASKS:
    task = few_shot_tasks.builtin_task(name, num_queries=20)
    assert task == few_shot_tasks.builtin_task(name, num_queries=20)
    examples = task.demonstrations + task.queries
    assert all(icl_corpus.is_held_out("word", e.query) for e in examples)
    assert not {e.query for e in task.demonstrations} & {e.query for e in task.queries}
  suffix = few_shot_tasks.builtin_task("suffix", num_queries=5)
  assert icl_corpus.is_held_out("suffix", suffix.queries[0].answer[-2:])
  assert suffix != few_shot_tasks.builtin_task("suffix", num_queries=5, seed=1)
  choice = few_shot_tasks.builtin_task("cipher_choice", num_queries=30)
  cipher = few_shot_tasks.builtin_task("cipher", num_queries=30)
  assert [q.answer for q in choice.queries] == [q.answer for q in cipher.queries]
  assert all(len(set(q.choices)) == 4 and q.choices[q.correct] == q.answer
             for q in choice.queries)
  assert len({q.correct for q in choice.queries}) > 1  # the answer is not always first
  # The training stream never holds a held-out word (nor, so, a built-in query).
  lines = icl_corpus.episodes_text(300, seed=0).splitlines()
  pairs = [line.split(" -> ") for line in lines if " -> " in line]
  assert len(pairs) > 1000
  assert not any(icl_corpus.is_held_out("word", word) for word, _ in pairs)


def test_jsonl_tasks_and_their_errors(tmp_path):
  path = tmp_path / "antonyms.jsonl"
  path.write_text('{"description": "opposite:"}\n\n'
                  '{"query": "hot", "answer": "cold"}\n'
                  '{"query": "up", "answer": "down", "split": "demo"}\n'
                  '{"query": "big", "answer": "small", "split": "eval"}\n', encoding="utf-8")
  task = few_shot_tasks.load_task(f"file:{path}")
  assert task.name == "antonyms" and task.description == "opposite:"
  assert [e.query for e in task.demonstrations] == ["hot", "up"]
  assert [e.query for e in task.queries] == ["hot", "big"] and not task.multiple_choice
  mc = tmp_path / "mc.jsonl"
  mc.write_text('{"query": "1+1", "choices": ["3", "2"], "correct": 1}\n', encoding="utf-8")
  loaded = few_shot_tasks.load_jsonl_task(str(mc))
  assert loaded.multiple_choice and loaded.queries[0].answer == "2"

  def fails(text, match):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=match):
      few_shot_tasks.load_jsonl_task(str(bad))

  good = '{"query": "a", "answer": "b"}\n'
  fails(good + "{not json\n", r"bad.jsonl:2: not valid JSON")
  fails(good + '{"query": "a", "anser": "b"}\n', r"bad.jsonl:2: unknown key 'anser'")
  fails('{"query": "a"}\n', r"bad.jsonl:1: key 'answer' must be a string")
  fails('{"query": "a", "choices": ["x", "y"], "correct": 2}\n',
        r"bad.jsonl:1: key 'correct' must be an index into 'choices' \(0..1\), got 2")
  fails(good + '{"query": "a", "choices": ["x", "y"], "correct": 0}\n',
        r"bad.jsonl:2: mixes multiple-choice and free-form")
  fails(good + '{"description": "late"}\n', r"bad.jsonl:2: key 'description' must be alone")
  fails('{"query": "a", "answer": "b", "split": "demo"}\n', r"bad.jsonl: no queries")
  fails("[1, 2]\n", r"bad.jsonl:1: expected a JSON object, got list")
  with pytest.raises(UserError, match="no such file"):
    few_shot_tasks.load_task(f"file:{tmp_path / 'missing.jsonl'}")
  with pytest.raises(UserError, match="unknown built-in few-shot task 'nope'"):
    few_shot_tasks.load_task("builtin:nope")
  with pytest.raises(UserError, match="expected 'builtin:NAME'"):
    few_shot_tasks.load_task("copy")


# ------------------------------------------------------------------------------- scoring
@pytest.fixture(scope="module")
def tiny_gpt():
  config = gpt.GPTConfig(**gpt.config_for("tiny", vocab_size=11, num_layers=2, d_model=32,
                                          num_heads=4, max_len=40))
  model = gpt.GPT(config)
  init = jax.jit(lambda rng: model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"])
  return model, nn.meta.unbox(init(jax.random.key(3)))


def test_completion_log_likelihood_is_the_sum_of_per_token_log_softmax(tiny_gpt):
  model, params = tiny_gpt
  rng = np.random.default_rng(0)
  prompts_ids = [rng.integers(0, 11, size=n) for n in (3, 9, 20)]
  completions = [rng.integers(0, 11, size=n) for n in (1, 4, 6)]
  # bucket=16, batch_size=2: two buckets, one of them with two batches and a spare row.
  got = scoring.completion_log_likelihoods(model, params, prompts_ids, completions, max_len=40,
                                           batch_size=2, bucket=16)
  for i, (prompt, completion) in enumerate(zip(prompts_ids, completions)):
    sequence = np.concatenate([prompt, completion])
    logits = jax.jit(model.apply)({"params": params}, sequence[None, :-1])[0]  # unpadded
    log_probs = jax.nn.log_softmax(logits)
    expected = sum(float(log_probs[len(prompt) - 1 + j, token])
                   for j, token in enumerate(completion))
    np.testing.assert_allclose(got[i], expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(UserError, match="does not fit the model's context"):
    scoring.completion_log_likelihoods(model, params, [np.zeros(40, np.int32)],
                                       [np.zeros(2, np.int32)], max_len=40)


class FixedDistribution(nn.Module):
  """Predicts the same next-token distribution at every position, whatever came before."""
  log_probs: tuple

  def __call__(self, tokens):
    return jnp.broadcast_to(jnp.asarray(self.log_probs), (*tokens.shape, len(self.log_probs)))


def test_multiple_choice_picks_the_likeliest_and_normalisation_can_flip_it():
  tokenizer = CharTokenizer("\nab ->")
  # p("\n") = .5, p("a") = .05, p("b") = .45 (the rest ~0).
  model = FixedDistribution(tuple(np.log([0.5, 0.05, 0.45, 1e-9, 1e-9, 1e-9]).tolist()))
  predict = lambda choices, normalize: scoring.multiple_choice_predictions(
      model, {}, tokenizer, ["a -> ", "ab -> "], choices, delimiter="\n", normalize=normalize,
      max_len=32, batch_size=4, bucket=8)
  # "b" beats "a" wherever it sits; a choice list may have any length.
  assert predict([("a", "b"), ("b", "a", "aa")], "none") == [1, 0]
  # Summed: "a\n" (-3.69) beats "bbbb\n" (-3.89); per token or character, "bbbb\n" (-0.78)
  # beats "a\n" (-1.84).
  assert predict([("a", "bbbb"), ("bbbb", "a")], "none") == [0, 1]
  assert predict([("a", "bbbb"), ("bbbb", "a")], "token") == [1, 0]
  assert predict([("a", "bbbb"), ("bbbb", "a")], "char") == [1, 0]
  with pytest.raises(UserError, match="--normalize='mean'"):
    scoring.choose(np.zeros(2), np.ones(2), "mean")


class Successor(nn.Module):
  """Predicts token id + 1 after every token: greedy decoding walks up the vocabulary. Keeps
  a per-row position in its cache, as generate's decoding protocol asks."""
  vocab_size: int

  @nn.compact
  def __call__(self, tokens, *, decode=False):
    if decode:
      self.variable("cache", "position_index", jnp.zeros, tokens.shape[:1], jnp.int32)
    return 10.0 * jax.nn.one_hot((tokens + 1) % self.vocab_size, self.vocab_size)


def test_greedy_exact_match_stops_at_the_delimiter():
  tokenizer = CharTokenizer(" abc\n->xyz")  # after " " the model writes "abc\n->xyz..."
  queries = ["x", "xyzzy", "zz", "y", "xy"]  # prompts of several lengths share batches
  answers = ["abc", "ab", "abc", "abcx", " abc "]
  prompts_text = [f"{q} -> " for q in queries]
  got = scoring.exact_match_predictions(Successor(10), {}, tokenizer, prompts_text, answers,
                                        delimiter="\n", max_len=24, batch_size=2, bucket=4)
  assert got == ["abc"] * 5
  assert [g == a.strip() for g, a in zip(got, answers)] == [True, False, True, False, True]


def test_bucketed_greedy_equals_recomputing_each_prompt_alone(tiny_gpt):
  """Prompts of different lengths share one padded, KV-cached batch; the reference re-runs
  each prompt's whole prefix without a cache at every step."""
  model, params = tiny_gpt
  rng = np.random.default_rng(1)
  # 36 + 5 new tokens fill the 40 positions exactly (the last new token is never an input).
  prompts_ids = [rng.integers(0, 11, size=n) for n in (2, 7, 13, 36)]
  got = scoring.greedy_continuations(model, params, prompts_ids, max_new_tokens=5, max_len=40,
                                     batch_size=4, bucket=16)
  forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens))
  for prompt, continuation in zip(prompts_ids, got):
    tokens = list(prompt)
    for _ in range(5):
      buffer = np.zeros((1, 40), np.int32)  # fixed shape: one compile; causal, so the
      buffer[0, :len(tokens)] = tokens     # zeros after the prefix change nothing
      tokens.append(int(np.argmax(forward(buffer)[0, len(tokens) - 1])))
    np.testing.assert_array_equal(continuation, tokens[len(prompt):])
  assert len({tuple(c) for c in got}) > 1  # not one degenerate continuation for all


# ------------------------------------------------------------- what each tokenizer is fed
@pytest.fixture
def fed_tokens(monkeypatch):
  """Runs few_shot.evaluate_task with the model calls replaced by recorders: returns the
  (prompt ids, completion ids) pairs scored and the prompt ids generated from."""
  fed = {"scored": [], "generated": []}

  def score(model, params, prompts_ids, completions, **kwargs):
    fed["scored"] += [(list(p), list(c)) for p, c in zip(prompts_ids, completions)]
    return np.zeros(len(prompts_ids))

  def generate(model, params, prompts_ids, *, max_new_tokens, **kwargs):
    fed["generated"] += [list(p) for p in prompts_ids]
    fed["max_new_tokens"] = max_new_tokens
    return [np.zeros(0, np.int32) for _ in prompts_ids]

  monkeypatch.setattr(scoring, "completion_log_likelihoods", score)
  monkeypatch.setattr(scoring, "greedy_continuations", generate)

  def run(tokenizer, task_name, k=2):
    task = few_shot_tasks.builtin_task(task_name, num_queries=6)
    few_shot.evaluate_task(None, {}, tokenizer, task, [k], max_len=512)
    texts = prompts.few_shot_prompts(task, k)  # each ends in " ->"
    return task, texts, fed
  return run


@pytest.fixture(scope="module")
def bpe_tokenizer():
  return BPETokenizer.fit(icl_corpus.episodes_text(300, seed=0), 300)


def test_bpe_is_fed_the_training_texts_tokens(fed_tokens, bpe_tokenizer):
  """Byte-level BPE merges the separator's space into the answer (" qgrb" -> " q" "g" ...):
  the prompt must end at " ->", not in a lone " " token, so prompt + completion tokens are
  those of the training text "... -> answer\n"."""
  tok = bpe_tokenizer
  task, texts, fed = fed_tokens(tok, "cipher_choice")
  pairs = iter(fed["scored"])
  for text, query in zip(texts, task.queries):
    for choice in query.choices:
      prompt_ids, completion_ids = next(pairs)
      assert prompt_ids == list(tok.encode(text))
      assert prompt_ids + completion_ids == list(tok.encode(f"{text} {choice}\n"))
  assert sum(tok.decode(c[:1]).startswith(" ") and len(tok.decode(c[:1])) > 1
             for _, c in fed["scored"]) > len(fed["scored"]) // 2  # the space is merged

  task, texts, fed = fed_tokens(tok, "reverse")
  assert fed["generated"] == [list(tok.encode(text)) for text in texts]
  assert all(tok.decode(ids[-1:]) == " ->" for ids in fed["generated"])
  assert fed["max_new_tokens"] == max(len(tok.encode(f" {q.answer}\n")) for q in task.queries)


def test_a_bpe_answer_ends_at_a_document_end(bpe_tokenizer, monkeypatch):
  """Decoding keeps "<|endoftext|>": what the model writes after it is not its answer."""
  end = BPETokenizer.END_OF_TEXT
  generated = [bpe_tokenizer.encode(f" ab{end}cd\n"), bpe_tokenizer.encode(" ab\n")]
  monkeypatch.setattr(scoring, "greedy_continuations", lambda *args, **kwargs: generated)
  got = scoring.exact_match_predictions(None, {}, bpe_tokenizer, ["q ->", "r ->"], ["ab", "ab"],
                                        delimiter="\n", answer_prefix=" ", max_len=64)
  assert got == ["ab", "ab"]


def test_character_tokenizer_is_fed_what_it_was_before_the_bpe_convention(fed_tokens):
  """A character tokenizer encodes the space alone either way: it stays in the prompt, so
  scores and generations are those of prompts ending in "-> " (the reference figures in
  configs/gpt_icl.py), with exactly the answer + "\n" characters scored."""
  tok = CharTokenizer.fit(icl_corpus.episodes_text(300, seed=0))
  fed_prompt = lambda text: list(tok.encode(text.rstrip(" ") + " "))  # "... -> "
  task, texts, fed = fed_tokens(tok, "cipher_choice")
  expected = [(fed_prompt(text), list(tok.encode(choice + "\n")))
              for text, query in zip(texts, task.queries) for choice in query.choices]
  assert fed["scored"] == expected
  task, texts, fed = fed_tokens(tok, "reverse")
  assert fed["generated"] == [fed_prompt(text) for text in texts]
  assert fed["max_new_tokens"] == max(len(q.answer) + 1 for q in task.queries)


# -------------------------------------------------------------------------------- runner
@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  """A 2-step run of configs/gpt_icl.py with a tiny model and corpus."""
  from genvis.train.trainer import Trainer  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path_factory.mktemp("icl_run"))
  config = config_lib.load_config(os.path.join(REPO, "configs/gpt_icl.py"), {
      "model.num_layers": 1, "model.d_model": 32, "model.num_heads": 2, "model.max_len": 64,
      "data.icl_train_episodes": 100, "data.icl_val_episodes": 10, "data.batch_size": 8,
      "train.steps": 2, "train.progress_bar": False, "train.log_every": 1, "eval.every": 0,
      "eval.num_batches": 1, "checkpoint.every": 1000, "sample.num_samples": 0,
  })
  Trainer(config, workdir, devices=jax.devices()[:1]).train()
  return workdir


def test_runner_writes_the_table_json_and_plot(trained_workdir, tmp_path):
  jsonl = tmp_path / "pick.jsonl"
  jsonl.write_text("".join(json.dumps({"query": q, "choices": [q, q[::-1]], "correct": 1}) + "\n"
                           for q in ("ab", "cd", "ef", "gh")), encoding="utf-8")
  results = few_shot.run_few_shot(trained_workdir, ["builtin:copy", f"file:{jsonl}"],
                                  [0, 1, 8], num_examples=3, devices=jax.devices()[:1])
  with open(os.path.join(trained_workdir, "few_shot.json"), encoding="utf-8") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results)) and saved["step"] == 2
  with open(os.path.join(trained_workdir, "few_shot.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  copy, pick = saved["tasks"]["copy"], saved["tasks"]["pick"]
  assert copy["scoring"] == "exact_match" and pick["scoring"] == "multiple_choice"
  assert copy["num_examples"] == 3 and pick["num_examples"] == 3
  assert set(copy["accuracy"]) == {"0", "1"} and "max_len=64" in copy["skipped"]["8"]
  assert set(pick["accuracy"]) == {"0", "1"}
  assert "only 3 demonstrations" in pick["skipped"]["8"]  # 4 lines, minus the query
  assert set(saved["mean_accuracy"]) == {"0", "1"}
  assert all(0.0 <= a <= 1.0 for r in saved["tasks"].values() for a in r["accuracy"].values())
  assert all(e["prediction"] in (e["prompt"][-6:-4], e["prompt"][-6:-4][::-1])
             for e in pick["examples"])  # one of the two choices
  table = few_shot.format_table(results)
  assert table.splitlines()[0].split()[-3:] == ["k=0", "k=1", "k=8"]
  assert table.splitlines()[2].split()[:3] == ["copy", "exact", "match"]


def test_prompts_must_fit_the_trained_context_not_model_max_len(trained_workdir, tmp_path):
  # The same run, as if trained on windows of 32 of its 64 positions.
  workdir = str(tmp_path / "short_windows")
  shutil.copytree(trained_workdir, workdir)
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    config = json.load(f)
  config["data"]["seq_len"] = 32
  with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f)
  results = few_shot.run_few_shot(workdir, ["builtin:copy"], [1], num_examples=3,
                                  devices=jax.devices()[:1])
  skipped = results["tasks"]["copy"]["skipped"]
  assert "> 32 (config.data.seq_len=32)" in skipped["1"], skipped  # fits 64, not 32


def test_a_character_outside_the_vocabulary_names_the_task():
  task = FewShotTask("shout", "", (Example("ab", "AB"),), (Example("cd", "CD"),))
  model = FixedDistribution((0.0,) * 5)
  with pytest.raises(UserError, match="task 'shout': character 'C' is not in the tokenizer"):
    few_shot.evaluate_task(model, {}, CharTokenizer("\nabcd"), task, [0], max_len=16)

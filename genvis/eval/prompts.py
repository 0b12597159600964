"""Few-shot prompts: description + k demonstrations + the query, as in GPT-3's appendix G.

    replace each letter:       <- description, then description_sep
    abcd -> qwer               <- k demonstrations: query, input_output_sep, answer,
    dcab -> erqw                  example_sep
    bbad ->                    <- the query, then input_output_sep without its trailing
                                  whitespace; the model continues with " " + the answer

As in GPT-3, a prompt ends without trailing whitespace and that whitespace (`answer_prefix`)
starts each completion: byte-level BPE merges a space into the word after it, so a prompt
ending in " " would end in a lone space token, which the training text almost never has
before an answer (scoring.py decides, per tokenizer, which side the whitespace is fed on).

The demonstrations for query i are drawn from the task's demonstration pool (never an example
whose query is the query itself) by a generator seeded with (seed, i). The k demonstrations
are the first k of one seeded order, so the k=1 prompt's demonstration is also in the k=4
prompt: the curve over k compares prompts that differ only in how much they show, not in
which examples were drawn. The default separators are the training episodes' format
(genvis/data/icl_corpus.py), so a prompt looks like the start of a training document.
"""

import dataclasses

import numpy as np

from genvis.data import icl_corpus
from genvis.errors import UserError
from genvis.eval.few_shot_tasks import Example, FewShotTask


@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """Separators of a prompt; `example_sep` also ends an answer (where generation stops)."""
  description_sep: str = icl_corpus.DESCRIPTION_SEP
  input_output_sep: str = icl_corpus.INPUT_OUTPUT_SEP
  example_sep: str = icl_corpus.EXAMPLE_SEP
  include_description: bool = True  # False: demonstrations alone (GPT-3 Fig. 1.2, no prompt)

  @property
  def prompt_end(self) -> str:
    """What ends a prompt after the query: input_output_sep without trailing whitespace."""
    return self.input_output_sep.rstrip()

  @property
  def answer_prefix(self) -> str:
    """input_output_sep's trailing whitespace, which starts each answer's completion."""
    return self.input_output_sep[len(self.prompt_end):]


def demonstration_indices(task: FewShotTask, query_index: int, k: int, seed: int) -> list[int]:
  """Indices into `task.demonstrations` for query `query_index`: the first k of a seeded
  order, skipping any example with the same query text."""
  query = task.queries[query_index].query
  order = np.random.default_rng([seed, query_index]).permutation(len(task.demonstrations))
  eligible = [int(i) for i in order if task.demonstrations[i].query != query]
  if len(eligible) < k:
    raise UserError(f"task {task.name!r}: k={k} demonstrations asked for, but its pool has "
                    f"only {len(eligible)} examples other than the query {query!r}")
  return eligible[:k]


def max_shots(task: FewShotTask) -> int:
  """The largest k every query of `task` can have (pool examples other than the query)."""
  pool = [d.query for d in task.demonstrations]
  return min(sum(text != q.query for text in pool) for q in task.queries)


def render_demonstration(example: Example, fmt: PromptFormat) -> str:
  return f"{example.query}{fmt.input_output_sep}{example.answer}{fmt.example_sep}"


def build_prompt(description: str, demonstrations: list[Example], query: Example,
                 fmt: PromptFormat) -> str:
  """The text the model continues with fmt.answer_prefix + the query's answer."""
  head = f"{description}{fmt.description_sep}" if description and fmt.include_description else ""
  shots = "".join(render_demonstration(d, fmt) for d in demonstrations)
  return f"{head}{shots}{query.query}{fmt.prompt_end}"


def few_shot_prompts(task: FewShotTask, k: int, seed: int = 0,
                     fmt: PromptFormat = PromptFormat()) -> list[str]:
  """One k-shot prompt per query of `task`."""
  if k < 0:
    raise UserError(f"--shots: k={k} must be >= 0")
  prompts = []
  for i, query in enumerate(task.queries):
    demos = [task.demonstrations[j] for j in demonstration_indices(task, i, k, seed)]
    prompts.append(build_prompt(task.description, demos, query, fmt))
  return prompts

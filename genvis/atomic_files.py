"""Files written whole or not at all.

A writer writes to a temporary name next to the target, and only a complete file is renamed
over it (`os.replace` is atomic on POSIX): a crash or a full disk leaves the old file, never
half a new one. Used for everything a run reads back (tokenizer, config, exported weights,
and metrics.jsonl when a resume cuts it back; steps append their lines to it).
"""

import contextlib
import os


@contextlib.contextmanager
def replacing(path: str):
  """Yields a temporary path to write `path`'s new content to; renamed over `path` when the
  block completes, removed if it raises."""
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  temporary = f"{path}.tmp-{os.getpid()}"
  try:
    yield temporary
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def write_text(path: str, text: str):
  with replacing(path) as temporary, open(temporary, "w", encoding="utf-8") as f:
    f.write(text)

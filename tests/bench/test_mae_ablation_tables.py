"""experiments/bench/mae_ablations.py's bookkeeping, with training replaced by stand-ins: each
setting is pre-trained and fine-tuned once however many tables share it, every fine-tune
starts from its own pre-training, and the wallclock table's speed-ups are step-time ratios.
(The training itself is the trainer's and the tasks' tests'; the figures come from full runs.)"""

import json
import os
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "experiments", "bench"))
import mae_ablations  # noqa: E402  pylint: disable=wrong-import-position


def fake_step_seconds(data, overrides, steps):
  del data, steps
  return (0.1 * overrides["model.decoder_layers"]
          + (0.4 if overrides["model.encoder_mask_tokens"] else 0.0))


def test_every_table_from_one_run_per_setting(tmp_path, monkeypatch, capsys):
  runs = []

  def fake_run_once(spec, overrides, workdir):
    runs.append((spec, overrides, workdir))
    if "configs/mae.py" in spec:  # a masked MSE that tells the settings apart
      return {"val_loss": overrides["model.mask_ratio"] + overrides["model.decoder_layers"],
              "seconds": 1.0}
    return {"val_accuracy": 0.5, "seconds": 1.0}

  monkeypatch.setattr(mae_ablations, "run_once", fake_run_once)
  monkeypatch.setattr(mae_ablations, "linear_probe", lambda workdir: 0.25)
  monkeypatch.setattr(mae_ablations, "step_seconds", fake_step_seconds)
  monkeypatch.setattr(sys, "argv", ["mae_ablations.py", "--workdir", str(tmp_path)])
  mae_ablations.main()
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

  pretrained = [workdir for spec, _, workdir in runs if "configs/mae.py" in spec]
  finetuned = [(overrides["init_from"], workdir) for spec, overrides, workdir in runs
               if "recipe=finetune" in spec]
  # 4 mask ratios + depths 1, 4, 8 + widths 128, 256 + the two w/ [M] rows: the default
  # (and depth 8 w/o [M], and depth 1 w/o [M]) are shared, not trained again.
  assert len(pretrained) == len(set(pretrained)) == 11
  assert sorted(source + "_ft" for source, _ in finetuned) == sorted(
      workdir for _, workdir in finetuned) and len(finetuned) == 11
  assert sum(workdir.endswith("scratch") for _, _, workdir in runs) == 1

  tables = result["tables"]
  assert [row["masked_mse"] for row in tables["mask_ratio"]] == pytest.approx(
      [2.25, 2.5, 2.75, 2.9])
  assert [row["masked_mse"] for row in tables["decoder_depth"]] == pytest.approx(
      [1.75, 2.75, 4.75, 8.75])
  wallclock = tables["wallclock"]
  assert [row["label"] for row in wallclock] == [
      "w/ [M], decoder 8", "w/o [M], decoder 8", "w/ [M], decoder 1", "w/o [M], decoder 1"]
  # Step times 1.2, 0.8, 0.5, 0.1 s: speed-ups over the first row.
  assert [row["speedup"] for row in wallclock] == pytest.approx([1.0, 1.5, 2.4, 12.0])
  markdown = (tmp_path / "ablations.md").read_text()
  assert "| w/o [M], decoder 1 | 50.0 | 25.0 | 12.00x |" in markdown
  assert "| 0.9 | 50.0 | 25.0 |" in markdown

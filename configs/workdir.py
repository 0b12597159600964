"""The config a run recorded (WORKDIR/config.json): evaluate or sample a run with the settings
it trained with, whatever overrides it was given, and override only what should change:

  python -m genvis.main --config=configs/workdir.py:runs/x --workdir=runs/x --mode=sample \
      --config.sample.prompt="ROMEO:"

Resuming training this way works too (the checkpoint then decides where it starts).
"""

from genvis.train import pretrained


def get_config(workdir=None):
  if not workdir:
    raise ValueError("configs/workdir.py needs the run's workdir after the colon: "
                     "--config=configs/workdir.py:runs/x")
  return pretrained.read_config(workdir)

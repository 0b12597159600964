"""A TensorBoard event file written without TensorFlow.

tensorboard's own EventFileWriter imports TensorFlow when it is installed (seconds of start-up
and GPU memory grabbed), so the scalars go through this small writer instead: the protobufs
from `tensorboard.compat.proto` in TFRecord framing (length, masked CRC-32C, data, masked
CRC-32C), one file per writer, named as TensorBoard expects.
"""

import os
import socket
import struct
import time

from tensorboard.compat.proto import event_pb2, summary_pb2


def _crc32c_table():
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFileWriter:
  """Appends scalar summaries to `logdir/events.out.tfevents.<time>.<host>`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")  # pylint: disable=consider-using-with
    self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

  def _write(self, event):
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    self._file.write(header + struct.pack("<I", masked_crc(header)) + data
                     + struct.pack("<I", masked_crc(data)))
    self._file.flush()

  def scalars(self, step: int, values: dict[str, float]):
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def close(self):
    self._file.close()

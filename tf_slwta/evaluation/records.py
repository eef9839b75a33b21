"""Per-batch outcomes of one evaluation, kept as they finish.

An evaluation of a stochastic model can take hours. Each finished batch's
outcomes (every row's per-image decisions, norms, probabilities; see
`robustness.evaluate_robustness`) are written at once to
`<folder>/batch-<index>.npz`, atomically (a temporary file renamed into
place), so

  * a killed evaluation resumes from its last finished batch, and a
    finished one is not redone;
  * several workers (or devices) can each take their share of the batches
    and the chief assembles the table from the files.

The folder is keyed by everything that changes the outcomes (`key`): other
settings start a new record beside the old ones, which stay as history.
"""

import hashlib
import io
import json
import os
import time
import uuid
from typing import Any, Callable, Dict, Iterable, Optional

import numpy as np
import tensorflow as tf

META_FILE = 'meta.json'
# Under a run folder: one folder per evaluation (its batches and tables).
EVALUATIONS_DIR = 'evaluations'


def key(settings: Dict[str, Any]) -> str:
  """A short stable name for `settings` (JSON-able): 12 hex digits."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]


def _atomic_write(path: str, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it."""
  temporary = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.gfile.GFile(temporary, 'wb') as f:
    f.write(data)
  tf.io.gfile.rename(temporary, path, overwrite=True)


class BatchRecords:
  """The per-batch files of one evaluation in `folder`.

  Args:
    folder: where the files go (created on first write).
    meta: the settings the record was made with; written as meta.json. A
      folder holding another record is refused.

  Raises:
    ValueError: `folder`'s meta.json records other settings.
  """

  def __init__(self, folder: str, meta: Optional[Dict[str, Any]] = None):
    self.folder = folder
    self.meta = json.loads(json.dumps(meta or {}, default=str))
    saved = self.read_meta()
    if saved is not None and meta is not None and saved != self.meta:
      raise ValueError(
          f'{folder} holds the batches of an evaluation made with other '
          f'settings; pass a new folder (or delete that one).')

  def read_meta(self) -> Optional[Dict[str, Any]]:
    """The record's meta.json, or None when there is none yet."""
    path = os.path.join(self.folder, META_FILE)
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)

  def path(self, index: int) -> str:
    """`<folder>/batch-<index, 5 digits>.npz`."""
    return os.path.join(self.folder, f'batch-{index:05d}.npz')

  def has(self, index: int) -> bool:
    """Whether batch `index` finished (its file is complete)."""
    return tf.io.gfile.exists(self.path(index))

  def save(self, index: int, arrays: Dict[str, np.ndarray]) -> None:
    """Writes batch `index`'s arrays (atomically)."""
    tf.io.gfile.makedirs(self.folder)
    if self.read_meta() is None:
      _atomic_write(os.path.join(self.folder, META_FILE),
                    json.dumps(self.meta, indent=2, sort_keys=True).encode())
    buffer = io.BytesIO()  # GFile cannot seek as zipfile needs.
    np.savez_compressed(buffer, **arrays)
    _atomic_write(self.path(index), buffer.getvalue())

  def load(self, index: int) -> Dict[str, np.ndarray]:
    """Batch `index`'s arrays, as `save` wrote them."""
    with tf.io.gfile.GFile(self.path(index), 'rb') as f:
      return dict(np.load(io.BytesIO(f.read())))

  def wait(self, indices: Iterable[int], timeout: float,
           say: Callable[[str], None] = print, poll: float = 5.0) -> None:
    """Blocks until every batch of `indices` has finished (other workers).

    Raises:
      TimeoutError: no new batch finished for `timeout` seconds; the
        message names the missing batches and how to finish them.
    """
    missing = [i for i in indices if not self.has(i)]
    last_change, last_count = time.monotonic(), len(missing)
    while missing:
      if time.monotonic() - last_change > timeout:
        raise TimeoutError(
            f'{len(missing)} batch(es) of {self.folder} never finished '
            f'(e.g. {missing[:5]}): a worker may have died. Run the same '
            f'command again: finished batches are kept and only the '
            f'missing ones are computed.')
      time.sleep(poll)
      missing = [i for i in missing if not self.has(i)]
      if len(missing) != last_count:
        last_change, last_count = time.monotonic(), len(missing)
        say(f'waiting for other workers: {len(missing)} batch(es) to go')

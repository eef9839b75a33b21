"""Outcomes of one evaluation, kept as they finish, checked when read back.

An evaluation of a stochastic model can take hours. Its work is kept in
two sizes, each written atomically (a temporary file renamed into place):

  `<folder>/batch-<index>.npz`            a finished batch: every row's
                                          per-image decisions, norms and
                                          probabilities
  `<folder>/batch-<index>/<attack>.npz`   one attack's output on a batch
                                          not finished yet, with its
                                          verdict and seconds

so a killed evaluation loses at most the attack that was running, a
finished one is not redone, and several workers (or devices) can each take
their share of the batches while the chief assembles the table.

Every file says what it was computed from: the record's key (a hash of the
settings, the checkpoint's contents and the test images; never a path, so
a moved or copied run keeps its record), the batch index, and a checksum
of the batch's images and labels. A file that cannot be read (cut short,
damaged) or that was computed from something else (another batch, another
evaluation) is moved aside into `<folder>/set_aside/` with a one-line note
and computed again; nothing is deleted.
"""

import hashlib
import io
import json
import os
import time
import uuid
import zipfile
from typing import Any, Callable, Dict, Iterable, Optional

import numpy as np
import tensorflow as tf

META_FILE = 'meta.json'
# Under a run folder: one folder per evaluation (its batches and tables).
EVALUATIONS_DIR = 'evaluations'
SET_ASIDE_DIR = 'set_aside'
# The array in every record file that says what it was computed from.
_STAMP = '__record__'


def key(settings: Dict[str, Any]) -> str:
  """A short stable name for `settings` (JSON-able): 12 hex digits."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]


def digest(*arrays: np.ndarray) -> str:
  """A checksum of arrays' shapes, dtypes and bytes: 40 hex digits."""
  h = hashlib.sha1()
  for array in arrays:
    array = np.ascontiguousarray(array)
    h.update(f'{array.dtype.str}{array.shape}'.encode())
    h.update(array.tobytes())
  return h.hexdigest()


def file_digest(path: str) -> Optional[str]:
  """A checksum of a file's bytes (40 hex digits), or None if it is missing."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, 'rb') as f:
    return hashlib.sha1(f.read()).hexdigest()


def _atomic_write(path: str, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it."""
  temporary = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.gfile.GFile(temporary, 'wb') as f:
    f.write(data)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def write_text(path: str, text: str) -> None:
  """Replaces the file `path` with `text`, atomically."""
  tf.io.gfile.makedirs(os.path.dirname(path))
  _atomic_write(path, text.encode('utf-8'))


def _what(index, label) -> str:
  return f'batch {index}' + (f' ({label})' if label else '')


def _safe(label: str) -> str:
  """An attack label as a file name: 'apgd_ce/sample' -> 'apgd_ce--sample'."""
  return label.replace('/', '--')


class BatchRecords:
  """The record files of one evaluation in `folder`.

  Args:
    folder: where the files go (created on first write).
    meta: what the outcomes depend on (JSON-able, no paths); written as
      meta.json, and its `key` stamps every file. A folder holding another
      evaluation is refused.
    announce: called with each one-line note (a file set aside).

  Raises:
    ValueError: `folder`'s meta.json records other settings.
  """

  def __init__(self, folder: str, meta: Optional[Dict[str, Any]] = None,
               announce: Callable[[str], None] = print):
    self.folder = folder
    self.meta = json.loads(json.dumps(meta or {}, default=str))
    self.key = key(self.meta)
    self.announce = announce
    saved = self.read_meta()
    if saved is not None and meta is not None and saved != self.meta:
      raise ValueError(
          f'{folder} holds the batches of an evaluation made with other '
          f'settings; pass a new folder (or delete that one).')

  def read_meta(self) -> Optional[Dict[str, Any]]:
    """The record's meta.json, or None when there is none (or it is
    unreadable: then it is rewritten on the next save)."""
    path = os.path.join(self.folder, META_FILE)
    if not tf.io.gfile.exists(path):
      return None
    try:
      with tf.io.gfile.GFile(path) as f:
        return json.load(f)
    except ValueError:
      self._set_aside(path, 'is not valid JSON')
      return None

  def path(self, index: int) -> str:
    """`<folder>/batch-<index, 5 digits>.npz`: a finished batch."""
    return os.path.join(self.folder, f'batch-{index:05d}.npz')

  def part_path(self, index: int, label: str) -> str:
    """`<folder>/batch-<index>/<label>.npz`: one attack of an open batch."""
    return os.path.join(self.folder, f'batch-{index:05d}',
                        f'{_safe(label)}.npz')

  def has(self, index: int) -> bool:
    """Whether batch `index` has a finished file (not yet checked)."""
    return tf.io.gfile.exists(self.path(index))

  def save(self, index: int, arrays: Dict[str, np.ndarray],
           inputs: str = '') -> None:
    """Writes finished batch `index` (atomically) and drops its parts.

    Args:
      index: the batch.
      arrays: its outcomes.
      inputs: `digest` of the batch's images and labels.
    """
    self._write(self.path(index), arrays, index, '', inputs)
    parts = os.path.dirname(self.part_path(index, 'x'))
    if tf.io.gfile.isdir(parts):
      tf.io.gfile.rmtree(parts)

  def save_part(self, index: int, label: str, arrays: Dict[str, np.ndarray],
                inputs: str = '') -> None:
    """Writes one attack's outcome on open batch `index` (atomically)."""
    self._write(self.part_path(index, label), arrays, index, label, inputs)

  def load(self, index: int, inputs: Optional[str] = None
           ) -> Optional[Dict[str, np.ndarray]]:
    """Finished batch `index`'s arrays, or None if it must be computed.

    Args:
      index: the batch.
      inputs: `digest` of the batch's images and labels; the file must
        have been computed from them (None: not checked).

    Returns:
      The arrays `save` wrote, or None when there is no file, or it was
      unreadable or computed from something else (then it is set aside,
      with a note).
    """
    return self._read(self.path(index), index, '', inputs)

  def load_part(self, index: int, label: str, inputs: Optional[str] = None
                ) -> Optional[Dict[str, np.ndarray]]:
    """One attack's outcome on open batch `index`, or None (see `load`)."""
    return self._read(self.part_path(index, label), index, label, inputs)

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

  # Internals.

  def _stamp(self, index: int, label: str, inputs: str) -> Dict[str, Any]:
    return {'key': self.key, 'batch': int(index), 'attack': label,
            'inputs': inputs}

  def _write(self, path: str, arrays: Dict[str, np.ndarray], index: int,
             label: str, inputs: str) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    if self.read_meta() is None:
      _atomic_write(os.path.join(self.folder, META_FILE),
                    json.dumps(self.meta, indent=2, sort_keys=True).encode())
    stamp = json.dumps(self._stamp(index, label, inputs), sort_keys=True)
    buffer = io.BytesIO()  # GFile cannot seek as zipfile needs.
    np.savez_compressed(buffer, **arrays, **{_STAMP: np.array(stamp)})
    _atomic_write(path, buffer.getvalue())

  def _read(self, path: str, index: int, label: str,
            inputs: Optional[str]) -> Optional[Dict[str, np.ndarray]]:
    if not tf.io.gfile.exists(path):
      return None
    try:
      with tf.io.gfile.GFile(path, 'rb') as f:
        with np.load(io.BytesIO(f.read())) as saved:
          arrays = {k: saved[k] for k in saved.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile,
            tf.errors.OpError) as e:
      self._set_aside(path, f'cannot be read ({type(e).__name__}: '
                      f'{str(e)[:80]})')
      return None
    try:
      stamp = json.loads(str(arrays.pop(_STAMP)))
    except (KeyError, ValueError):
      stamp = None
    if stamp is None:
      problem = 'says nothing of what it was computed from'
    elif stamp.get('key') != self.key:
      problem = 'was computed for another evaluation'
    elif (stamp.get('batch'), stamp.get('attack')) != (index, label):
      problem = (f'holds {_what(stamp.get("batch"), stamp.get("attack"))}, '
                 f'not {_what(index, label)}')
    elif inputs is not None and stamp.get('inputs') != inputs:
      problem = 'was computed from other test images'
    else:
      return arrays
    self._set_aside(path, problem)
    return None

  def _set_aside(self, path: str, problem: str) -> None:
    target = os.path.join(self.folder, SET_ASIDE_DIR)
    tf.io.gfile.makedirs(target)
    moved = os.path.join(target, os.path.relpath(path, self.folder).replace(
        os.sep, '--') + f'.{uuid.uuid4().hex[:8]}')
    tf.io.gfile.rename(path, moved, overwrite=True)
    self.announce(f'note: {path} {problem}; moved it to {moved} and '
                  f'computing it again.')

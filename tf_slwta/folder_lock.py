"""A run folder's lock: one process at a time works in a run's folder.

The lock is an `fcntl.flock` on `<folder>/.lock`. The system drops it when
its holder dies, however it dies, so a lock left by a killed run is found
stale and taken over, with a note. The file holds the holder's pid, host,
start time and command, for the message that refuses a second process.
Local file systems only (flock on NFS depends on its lock daemon).

The lock is re-entrant within a process: the command line takes it before
TensorFlow loads, and the mode it runs takes it again around its work. (A
second flock on a new open file description would refuse the process's own
first one, so the nested one takes nothing and the outer one releases.)
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Dict, Iterator, Tuple

LOCK_FILE = '.lock'
# The folders this process holds: realpath -> (pid, how many `locked` blocks
# are inside it). The pid tells a forked child that the lock is not its own.
_held: Dict[str, Tuple[int, int]] = {}
_held_guard = threading.Lock()


class RunFolderError(ValueError):
  """A run folder cannot be used as asked; the message says why and how."""


class RunInUse(RunFolderError):
  """Another process is working in the run folder."""


def _enter_held(key: str) -> bool:
  """Counts one more block inside a lock this process holds; whether it does."""
  with _held_guard:
    pid, depth = _held.get(key, (None, 0))
    if pid != os.getpid():
      return False
    _held[key] = (pid, depth + 1)
    return True


def _leave_held(key: str) -> None:
  with _held_guard:
    pid, depth = _held[key]
    if depth > 1:
      _held[key] = (pid, depth - 1)
    else:
      del _held[key]


@contextlib.contextmanager
def locked(folder: str, announce=print) -> Iterator[None]:
  """Holds `folder`'s lock while the block runs (the folder is made if missing).

  Re-entrant: inside a block that holds it, this process takes it again at
  once, and the outermost block releases it.

  Args:
    folder: a run folder.
    announce: called with a one-line note when a stale lock is taken over.

  Raises:
    RunInUse: another live process holds it; the message names it.
  """
  os.makedirs(folder, exist_ok=True)
  key = os.path.realpath(folder)
  if _enter_held(key):
    try:
      yield
    finally:
      _leave_held(key)
    return
  path = os.path.join(folder, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise RunInUse(
          f'{folder} is in use by {_holder(fd)}; wait for it to finish, '
          f'or pass another --output_dir.') from None
    previous = os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip()
    if previous:
      announce(f'note: {path} was left by {_describe(previous)}, which is '
               f'no longer running; taking it over.')
    me = json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                     'started': time.strftime('%Y-%m-%d %H:%M:%S'),
                     'command': ' '.join(sys.argv)})
    os.ftruncate(fd, 0)
    os.pwrite(fd, me.encode('utf-8'), 0)
    with _held_guard:
      _held[key] = (os.getpid(), 1)
    try:
      yield
    finally:
      with _held_guard:
        del _held[key]
      os.ftruncate(fd, 0)  # A clean exit leaves no holder to report.
  finally:
    os.close(fd)  # Drops the flock.


def _holder(fd: int) -> str:
  return _describe(os.pread(fd, 4096, 0).decode('utf-8', 'replace').strip())


def _describe(raw: str) -> str:
  try:
    info = json.loads(raw)
    return (f'process {info["pid"]} on {info["host"]} (started '
            f'{info["started"]}: {info["command"]})')
  except (ValueError, KeyError, TypeError):
    return 'another process'

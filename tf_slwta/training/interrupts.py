"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM.

Inside `deferred()` the first SIGINT or SIGTERM only raises a flag; the
training loop checks it after every step, saves a checkpoint and raises
`Interrupted`, which the command line reports in one line. A second SIGINT
stops at once (KeyboardInterrupt), for a step that takes too long.
"""

import contextlib
import signal
import threading
from typing import Callable, Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
  """The run stopped on a signal after saving its state.

  Attributes:
    exit_code: 128 + the signal number, as a shell reports a signal.
  """

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.exit_code = 128 + signum


def signal_name(signum: int) -> str:
  """'SIGINT', 'SIGTERM', ..."""
  return signal.Signals(signum).name


@contextlib.contextmanager
def deferred() -> Iterator[Callable[[], Optional[int]]]:
  """Defers SIGINT and SIGTERM while the block runs.

  Yields:
    `pending()`: the number of the first signal received, or None. Outside
    the main thread (where Python cannot install handlers) it is always
    None.
  """
  if threading.current_thread() is not threading.main_thread():
    yield lambda: None
    return
  received = []

  def handler(signum, frame):
    del frame
    if received and signum == signal.SIGINT:
      raise KeyboardInterrupt  # A second Ctrl-C: stop now.
    received.append(signum)

  previous = {s: signal.signal(s, handler) for s in SIGNALS}
  try:
    yield lambda: received[0] if received else None
  finally:
    for s, old in previous.items():
      signal.signal(s, old)

"""How far a running attack is, reported from inside its compiled loop.

An attack on a stochastic model can run for minutes in one `tf.function`
call. A caller that wants to see it move wraps the call:

  with reporting.reporter(lambda fraction: print(f'{fraction:.0%}')):
    attacks.apgd(logits_fn, x, y, eps=0.03)

The attack's Python entry point takes `token()` (an int64 scalar naming the
reporter of this thread, -1 for none) into its `tf.function` as an
argument, so compiled attacks are shared by every caller and never
retraced for a new reporter; its loop calls `report(token, done, total)`,
which about `REPORTS_PER_RUN` times per run executes a tiny
`tf.py_function` that hands done / total to the reporter. Without a
reporter that is one integer comparison per iteration. A caller that
compiles an attack call into a `tf.function` of its own passes the token
in as an argument and traces the call inside `traced_token(argument)`.
"""

import contextlib
import itertools
import threading
from typing import Callable, Dict, Iterator, Optional

import tensorflow as tf

Reporter = Callable[[float], None]

_local = threading.local()
_reporters: Dict[int, Reporter] = {}
_ids = itertools.count()
_lock = threading.Lock()
# Reports per attack run: often enough for a line that moves, few enough
# to cost nothing.
REPORTS_PER_RUN = 20


@contextlib.contextmanager
def reporter(callback: Optional[Reporter]) -> Iterator[None]:
  """Attacks started in this thread inside the block report to `callback`.

  Args:
    callback: called with the fraction done in [0, 1] (from TensorFlow's
      threads: it must be thread-safe and quick); None reports nothing.
  """
  if callback is None:
    yield
    return
  with _lock:
    key = next(_ids)
    _reporters[key] = callback
  previous = getattr(_local, 'key', -1)
  _local.key = key
  try:
    yield
  finally:
    _local.key = previous
    with _lock:
      _reporters.pop(key, None)


def token() -> tf.Tensor:
  """int64 scalar: the reporter of this thread's innermost `reporter`
  block (or, while a caller traces, its `traced_token`), or -1; pass it
  into the attack's `tf.function`."""
  traced = getattr(_local, 'traced', None)
  if traced is not None and not tf.executing_eagerly():
    return traced
  return tf.constant(getattr(_local, 'key', -1), tf.int64)


@contextlib.contextmanager
def traced_token(key: tf.Tensor) -> Iterator[None]:
  """While a caller traces its own `tf.function` around an attack call,
  `token()` is that function's argument `key` (int64 scalar)."""
  previous = getattr(_local, 'traced', None)
  _local.traced = key
  try:
    yield
  finally:
    _local.traced = previous


def _deliver(key, fraction) -> None:
  callback = _reporters.get(int(key))
  if callback is not None:
    callback(float(fraction))


def report(key: tf.Tensor, done, total) -> None:
  """Inside a compiled loop: tells the reporter `key` that done / total of
  the attack is finished, about `REPORTS_PER_RUN` times per run.

  Args:
    key: the int64 scalar `token()` gave; -1 reports nothing.
    done: int scalar (tensor or Python) of iterations done, >= 1.
    total: int scalar (tensor or Python) of iterations in all, >= 1.
  """
  done, total = tf.cast(done, tf.int64), tf.cast(total, tf.int64)
  period = tf.maximum(-(-total // REPORTS_PER_RUN), 1)
  due = tf.logical_and(key >= 0, tf.logical_or(
      tf.equal(done % period, 0), done >= total))

  def send():
    tf.py_function(_deliver, [key, tf.cast(done, tf.float64) /
                              tf.cast(total, tf.float64)], [])
    return tf.constant(True)

  tf.cond(due, send, lambda: tf.constant(False))

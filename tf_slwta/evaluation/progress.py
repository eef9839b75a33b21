"""Progress of long evaluations: which attack runs, how far, and an ETA.

Keras' progress bar on a terminal; in a log, a plain line with the elapsed
time and the ETA at most every `interval` seconds (and at the end), so a
long evaluation is never silent and a short one is not noisy.
"""

import sys
import time

import keras


class WorkProgress:
  """Counts finished units of work (e.g. one attack run on one batch).

  Args:
    total: units in all, >= 0.
    title: what is running, e.g. 'robustness' or 'audit'.
    enabled: print anything at all.
    unit: the unit's name for the rate ('run', 'image', ...).
    interval: least seconds between two plain lines in a log.
  """

  def __init__(self, total: int, title: str, enabled: bool = True,
               unit: str = 'run', interval: float = 5.0):
    self.total, self.title, self.enabled, self.unit = total, title, enabled, unit
    self.done, self.label, self.interval = 0, '', interval
    self.started = time.perf_counter()
    self.printed = -float('inf')
    self.bar = None
    if enabled and sys.stdout.isatty():
      self.bar = keras.utils.Progbar(total, unit_name=unit,
                                     stateful_metrics=['attack'])

  def start(self, label: str) -> None:
    """Names the work about to run (shown until the next `advance`)."""
    self.label = label
    if self.bar is not None:
      self.bar.update(self.done, [('attack', label)])

  def advance(self, units: int = 1) -> None:
    """Marks `units` more as done and shows the progress."""
    self.done += units
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.update(self.done, [('attack', self.label)])
      return
    now = time.perf_counter()
    if now - self.printed < self.interval and self.done < self.total:
      return
    self.printed = now
    elapsed = now - self.started
    eta = elapsed / self.done * (self.total - self.done) if self.done else 0
    print(f'{self.title}: {self.label} done, {self.done}/{self.total} '
          f'{self.unit}s ({100 * self.done / max(self.total, 1):.0f}%), '
          f'{_clock(elapsed)} elapsed, ETA {_clock(eta)}', flush=True)

  def close(self) -> None:
    """Ends the bar's line on a terminal."""
    if self.bar is not None and self.done < self.total:
      self.bar.update(self.done, finalize=True)


def _clock(seconds: float) -> str:
  seconds = int(seconds)
  if seconds >= 3600:
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'
  return f'{seconds // 60}:{seconds % 60:02d}'

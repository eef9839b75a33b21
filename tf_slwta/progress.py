"""Progress of long work (training epochs, attacks, certification, requests).

One code path for every place the output goes: the same numbers, drawn as
one line that rewrites itself on a terminal or in a notebook, and as plain
lines at most every `interval` seconds in a pipe or a log file (never
silent for long, never a wall of lines).

The estimate of the time left is made per kind of work. Each piece of work
(a `Task`: one attack on one batch, say) has a kind and an estimated cost
(e.g. forward passes per image); once a kind has run for a while, its
measured seconds per cost unit price what is left of that kind, and the
kinds not seen yet are priced at the average rate so far. A task reports
its own fraction done as it runs (`Task.update`, which the attacks call
from inside their compiled loops, `attacks.reporting`), so the estimate
moves within a long attack and not only between attacks.

Plain Python (no TensorFlow): usable before TensorFlow loads.
"""

import collections
import shutil
import sys
import threading
import time
from typing import Dict, List, Optional, TextIO

# Least seconds between two redraws of the line on a terminal.
_REDRAW_SECONDS = 0.2
_BAR_WIDTH = 20


def clock(seconds: float) -> str:
  """'m:ss' or 'h:mm:ss' for a duration >= 0 in seconds."""
  seconds = int(max(seconds, 0))
  if seconds >= 3600:
    return f'{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}'
  return f'{seconds // 60}:{seconds % 60:02d}'


def redraws_in_place(stream: TextIO) -> bool:
  """Whether `stream` shows a line that rewrites itself with '\\r'.

  True on a terminal and in a Jupyter/IPython kernel (whose output cells
  honour '\\r'); False for pipes and files.
  """
  try:
    if stream.isatty():
      return True
  except (AttributeError, ValueError):  # No isatty, or a closed stream.
    return False
  return 'ipykernel' in sys.modules


class Task:
  """One piece of work in a `Progress`; see `Progress.task`.

  Attributes:
    label: what runs, as shown (e.g. 'apgd_ce/sample on batch 2 of 4').
    kind: what it is priced as (e.g. 'apgd_ce/sample').
    cost: its estimated cost, > 0, in the progress' cost units.
    counted: whether it counts in 'done/total'.
  """

  def __init__(self, progress: 'Progress', label: str, kind: str,
               cost: float, counted: bool = True):
    self.progress, self.label, self.kind, self.cost = progress, label, kind, cost
    self.counted = counted
    self.fraction = 0.0
    self.started = progress.now()

  def update(self, fraction: float) -> None:
    """Reports that `fraction` in [0, 1] of the task is done (thread-safe)."""
    self.progress._update(self, min(max(float(fraction), 0.0), 1.0))  # pylint: disable=protected-access

  def finish(self) -> None:
    """Marks the task done."""
    self.progress._finish(self)  # pylint: disable=protected-access

  def __enter__(self) -> 'Task':
    return self

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None:
      self.finish()
    else:
      self.progress._drop(self)  # pylint: disable=protected-access


class Progress:
  """How far a long job is, how long it took so far and how long it will take.

  Two ways to use it. Counted work (training steps, images): `start(label)`
  names what runs, `advance(units)` counts units done, each of the same
  cost. Priced work (attacks): `plan(kind, cost, count)` announces what
  will run, and each piece runs as a `task(label, kind, cost)` that may
  report its own fraction done.

  Args:
    title: what runs, e.g. 'robustness', 'audit', 'epoch 3/10'.
    total: how many units or tasks in all (shown as 'done/total'), >= 0.
    unit: their name for that count ('attack run', 'step', 'image').
    enabled: print anything at all.
    stream: where to print (default sys.stdout, looked up when printing).
    interval: least seconds between two plain lines in a pipe or a log.
    workers: how many tasks run at the same time (model replicas), >= 1;
      the time left is shared among them.
    dynamic: force the terminal (True) or log (False) drawing; None
      decides from the stream (`redraws_in_place`).
    now: the clock in seconds (for tests).
    done: units of `total` already done before (a resumed epoch), >= 0.
  """

  def __init__(self, title: str, total: int = 0, *, unit: str = 'step',
               enabled: bool = True, stream: Optional[TextIO] = None,
               interval: float = 10.0, workers: int = 1,
               dynamic: Optional[bool] = None, now=time.monotonic,
               done: int = 0):
    self.title, self.total, self.unit = title, int(total), unit
    self.enabled, self.interval = enabled, interval
    self.workers = max(int(workers), 1)
    self.now = now
    self._stream, self._dynamic = stream, dynamic
    self._lock = threading.RLock()
    self._started = self._last_advance = now()
    # Estimated cost still to come, done so far, and seconds spent, by kind;
    # counted units are kind '' of cost 1.
    self._planned: Dict[str, float] = collections.defaultdict(float)
    self._planned[''] = float(self.total - done)
    self._cost_done: Dict[str, float] = collections.defaultdict(float)
    self._seconds: Dict[str, float] = collections.defaultdict(float)
    self._running: List[Task] = []
    self._done = done
    self._label = ''
    self._info = ''
    self._printed = self._started  # When the last line was drawn.
    self._shown = False  # Whether any line was drawn.
    self._last_line = ''
    self._drawn = 0  # Length of the line drawn on a terminal; 0 when none.

  @property
  def stream(self) -> TextIO:
    """Where the progress goes."""
    return self._stream or sys.stdout

  @property
  def dynamic(self) -> bool:
    """Whether the line rewrites itself (terminal, notebook)."""
    if self._dynamic is None:
      self._dynamic = redraws_in_place(self.stream)
    return self._dynamic

  @property
  def done(self) -> int:
    """Units or tasks finished so far."""
    return self._done

  def plan(self, kind: str, cost: float, count: int = 1) -> None:
    """Announces `count` tasks of `kind`, each of estimated `cost` > 0.

    Planning every task at the start makes the time left honest from the
    first minute; a task never planned is priced as it comes.
    """
    with self._lock:
      self._planned[''] = 0.0  # Priced work: no counted units.
      self._planned[kind] += float(cost) * count

  def task(self, label: str, kind: Optional[str] = None,
           cost: float = 1.0, counted: bool = True) -> Task:
    """Starts a task; use it as a context manager, or call `finish()`.

    Args:
      label: what runs, as shown.
      kind: what it is priced as (default: `label`).
      cost: its estimated cost, > 0.
      counted: count it in 'done/total' (False for work between the
        counted tasks, such as scoring).
    """
    with self._lock:
      task = Task(self, label, kind or label, max(float(cost), 1e-9),
                  counted)
      self._running.append(task)
      self._show(force=self.dynamic)
      return task

  def start(self, label: str) -> None:
    """Names the counted work that runs now (shown until changed)."""
    with self._lock:
      self._label = label
      self._show(force=self.dynamic)

  def advance(self, units: int = 1, info: Optional[str] = None) -> None:
    """Counts `units` >= 0 more units done since the last call.

    Args:
      units: units done.
      info: a short text shown beside the numbers (e.g. the loss), or None
        to keep the last one.
    """
    with self._lock:
      now = self.now()
      if info is not None:
        self._info = info
      self._count('', float(units), now - self._last_advance)
      self._last_advance = now
      self._done += units
      self._show()

  def close(self) -> None:
    """Ends the job: its final numbers stay on a line of their own."""
    with self._lock:
      self._label = ''
      if not self.enabled or not (self._shown or self._done):
        return  # Nothing ran: nothing to say.
      self._show(force=True)
      if self.dynamic and self._drawn:
        self.stream.write('\n')
        self.stream.flush()
        self._drawn = 0

  def write(self, text: str) -> None:
    """Prints a line without breaking the progress line on a terminal."""
    with self._lock:
      if self.enabled and self.dynamic and self._drawn:
        self.stream.write('\r' + ' ' * self._drawn + '\r')
        self._drawn = 0
      print(text, file=self.stream, flush=True)
      self._show(force=self.dynamic)

  def seconds_left(self) -> Optional[float]:
    """The estimated seconds left, or None before anything was measured."""
    with self._lock:
      now = self.now()
      cost, seconds = dict(self._cost_done), dict(self._seconds)
      for task in self._running:  # What running tasks did so far counts.
        cost[task.kind] = cost.get(task.kind, 0.0) + task.cost * task.fraction
        seconds[task.kind] = seconds.get(task.kind, 0.0) + now - task.started
      rates = {k: seconds.get(k, 0.0) / c for k, c in cost.items() if c > 0}
      if not rates:
        return None
      average = (sum(seconds.get(k, 0.0) for k in rates) /
                 sum(cost[k] for k in rates))
      left = 0.0
      for kind in set(self._planned) | {t.kind for t in self._running}:
        if kind in self._planned:
          remaining = self._planned[kind] - cost.get(kind, 0.0)
        else:  # Never planned: only what is left of the running ones.
          remaining = sum(t.cost * (1.0 - t.fraction) for t in self._running
                          if t.kind == kind)
        left += max(remaining, 0.0) * rates.get(kind, average)
      return left / self.workers

  # Internals (under the lock).

  def _count(self, kind: str, cost: float, seconds: float) -> None:
    self._cost_done[kind] += cost
    self._seconds[kind] += max(seconds, 0.0)

  def _update(self, task: Task, fraction: float) -> None:
    with self._lock:
      task.fraction = max(task.fraction, fraction)
      self._show()

  def _finish(self, task: Task) -> None:
    with self._lock:
      if task not in self._running:
        return
      self._running.remove(task)
      self._count(task.kind, task.cost, self.now() - task.started)
      self._done += int(task.counted)
      self._show(force=self.dynamic)

  def _drop(self, task: Task) -> None:
    with self._lock:
      if task in self._running:
        self._running.remove(task)

  def _line(self) -> str:
    elapsed = self.now() - self._started
    left = self.seconds_left()
    finished = self.total > 0 and self._done >= self.total and not self._running
    if finished:
      share, left = 1.0, 0.0
    elif left is not None and elapsed + left > 0:
      share = elapsed / (elapsed + left)
    else:
      share = self._done / self.total if self.total else 0.0
    count = (f'{self._done}/{self.total} {self.unit}s' if self.total else
             f'{self._done} {self.unit}s')
    running = [t.label + (f' ({100 * t.fraction:.0f}%)' if t.fraction else '')
               for t in self._running] + ([self._label] if self._label else [])
    timing = f'{clock(elapsed)} elapsed' + (
        '' if finished else ', ETA ?' if left is None else
        f', ETA {clock(left)}')
    parts = [count] + (['; '.join(running)] if running else []) + [timing] + (
        [self._info] if self._info else [])
    if self.dynamic:
      filled = int(share * _BAR_WIDTH)
      bar = '=' * filled + ('>' if filled < _BAR_WIDTH else '')
      return (f'{self.title} {100 * share:3.0f}% [{bar:<{_BAR_WIDTH}}] ' +
              ' | '.join(parts))
    return f'{self.title}: {100 * share:.0f}%, ' + ', '.join(parts)

  def _show(self, force: bool = False) -> None:
    """Draws the line: on a terminal at most every 0.2 s (or when `force`),
    in a log when the first unit is done and then every `interval` s."""
    if not self.enabled:
      return
    now = self.now()
    if not force:
      first = not self._shown and self._done > 0 and not self.dynamic
      wait = _REDRAW_SECONDS if self.dynamic else self.interval
      if not first and now - self._printed < wait:
        return
    line = self._line()
    if not self.dynamic and line == self._last_line:
      return  # A log never gets the same line twice.
    self._printed, self._shown, self._last_line = now, True, line
    if self.dynamic:
      width = shutil.get_terminal_size((100, 24)).columns - 1
      line = line[:max(width, 20)]
      self.stream.write('\r' + line + ' ' * max(self._drawn - len(line), 0))
      self._drawn = len(line)
    else:
      self.stream.write(line + '\n')
    self.stream.flush()

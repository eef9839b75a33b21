"""Progress: one code path for terminals, notebooks, pipes and logs."""

import io
import sys

import numpy as np
import pytest

from attack_fixtures import logits_fn, sample_batch
from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta import progress as progress_lib
from tf_slwta.attacks import reporting
from tf_slwta.evaluation import robustness


class Terminal(io.StringIO):
  """Output that says it is a terminal."""

  def isatty(self):
    return True


class Clock:
  """A clock the test moves by hand."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_a_log_gets_a_line_per_interval_and_an_honest_time_left():
  clock, out = Clock(), io.StringIO()
  progress = progress_lib.Progress('robustness', 6, unit='attack run',
                                   stream=out, dynamic=False, interval=10,
                                   now=clock)
  # Three batches of a slow attack (100 cost units, 20 s each) and a quick
  # one (10 units, 1 s each), announced up front.
  progress.plan('apgd', 100, 3)
  progress.plan('square', 10, 3)
  for batch in range(3):
    with progress.task(f'apgd on batch {batch + 1}', 'apgd', 100) as task:
      for tenth in range(1, 11):
        clock.now += 2
        task.update(tenth / 10)
    with progress.task(f'square on batch {batch + 1}', 'square', 10):
      clock.now += 1
  progress.close()
  lines = out.getvalue().splitlines()
  # Within the first attack (nothing finished yet) the log already moves.
  assert lines[0].startswith('robustness: ') and 'apgd on batch 1 (50%)' in lines[0]
  assert 'ETA' in lines[0] and '\r' not in out.getvalue()
  # At most one line per 10 s of a 63 s job, plus the last one.
  assert 5 <= len(lines) <= 8
  assert lines[-1] == 'robustness: 100%, 6/6 attack runs, 1:03 elapsed'
  # The time left is priced per kind: after one batch it is exact.
  second = [l for l in lines if 'batch 2 (50%)' in l][0]
  assert 'ETA 0:32' in second  # 31 s elapsed of 63.


def test_a_terminal_gets_one_line_that_rewrites_itself():
  clock, out = Clock(), io.StringIO()
  progress = progress_lib.Progress('epoch 1/2', 5, stream=out, dynamic=True,
                                   now=clock)
  for step in range(5):
    clock.now += 1
    progress.advance(1, info=f'loss {1 / (step + 1):.3f}')
  progress.close()
  text = out.getvalue()
  assert text.count('\n') == 1 and text.endswith('\n')  # One line in all.
  frames = [f.rstrip() for f in text.rstrip('\n').split('\r') if f]
  assert frames[0].startswith('epoch 1/2  20% [====>') and 'ETA 0:04' in frames[0]
  assert frames[-1].startswith('epoch 1/2 100% [====================] 5/5 steps')
  assert frames[-1].endswith('loss 0.200')


def test_a_resumed_epoch_counts_only_what_this_process_does():
  clock, out = Clock(), io.StringIO()
  progress = progress_lib.Progress('epoch 2/3', 10, stream=out, dynamic=False,
                                   interval=0, now=clock, done=6)
  clock.now += 4
  progress.advance(2)
  assert '8/10 steps' in out.getvalue() and 'ETA 0:04' in out.getvalue()


def test_notebooks_redraw_and_pipes_do_not(monkeypatch):
  assert not progress_lib.redraws_in_place(io.StringIO())
  monkeypatch.setitem(sys.modules, 'ipykernel', object())
  assert progress_lib.redraws_in_place(io.StringIO())


def test_attacks_report_how_far_they_are_from_inside_their_loops():
  x, y = sample_batch(16)
  seen = {}
  for name, run in {
      'apgd': lambda: attacks.apgd(logits_fn(), x, y, 0.05, steps=40,
                                   restarts=2),
      'pgd': lambda: attacks.pgd(logits_fn(), x, y, 0.05, 0.01, 10),
      'square': lambda: attacks.square(logits_fn(), x, y, 0.05, queries=30),
      'noise': lambda: attacks.random_noise(logits_fn(), x, y, 0.05,
                                            draws=3)}.items():
    fractions = []
    with reporting.reporter(fractions.append):
      run()
    seen[name] = fractions
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1)
    assert 3 <= len(fractions) <= reporting.REPORTS_PER_RUN + 1
  assert seen['apgd'][9] == pytest.approx(0.5)  # First of two restarts.
  # Without a reporter nothing is delivered, and nothing breaks.
  attacks.apgd(logits_fn(), x, y, 0.05, steps=10)


def test_an_evaluation_shows_each_attack_moving_on_a_terminal(monkeypatch):
  x, y = sample_batch(40)
  images = np.round(x * 255).astype(np.uint8)
  cfg = config_lib.AttackConfig(attacks=('pgd_linf', 'apgd_ce'), pgd_eps=0.03,
                                pgd_alpha=0.01, pgd_steps=40, aa_eps=0.03,
                                apgd_steps=40)
  out = Terminal()
  monkeypatch.setattr(sys, 'stdout', out)
  monkeypatch.setenv('COLUMNS', '200')  # Lines are cut to the terminal.
  robustness.evaluate_robustness(logits_fn(), images, y, cfg, batch_size=20)
  frames = out.getvalue().split('\r')
  # Each attack on each batch is named, with its own progress inside it.
  for label in ('pgd_linf/sample on batch 1 of 2',
                'apgd_ce/sample on batch 2 of 2'):
    assert any(label in f for f in frames), label
  assert any('%)' in f and 'apgd_ce' in f for f in frames)
  assert '4/4 attack runs' in frames[-1]

"""Every mode run as a person runs it: in a terminal (a pseudo-terminal).

Output that goes to a terminal takes other code paths than output piped
into a file (a progress line that rewrites itself); the rest of the suite
pipes, so a crash that only a terminal shows hid there once. Here the
default job (on tiny data) and --mode=evaluate, audit, certify, grid,
export and predict each run with a pseudo-terminal as their stdout and
stderr, and must exit 0, draw their progress, and write their tables and
report.
"""

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

from serving_standin import ServingStandIn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO, 'main.py')
TINY = ['--dataset=synthetic', '--train_examples=64', '--eval_examples=16',
        '--batch_size=32', '--eval_batch_size=8', '--epochs=1',
        '--seed_cnn_filters=4,8', '--seed_cnn_units=16',
        '--strategy=one_device']
# The modes after the default job, run one after the other in one process
# (TensorFlow loads once) whose output is the terminal.
_DRIVER = r"""
import json, sys
from tf_slwta.cli import main
for args in json.load(open(sys.argv[1])):
  print('TERMINAL-START', ' '.join(args), flush=True)
  code = main.run(['main.py', *args])
  print('TERMINAL-EXIT', code, flush=True)
  if code:
    break
"""


def in_terminal(argv, cwd, timeout=900):
  """Runs `argv` with a 120-column pseudo-terminal as stdin, stdout and
  stderr; returns (exit code, everything it wrote)."""
  leader, follower = os.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
  env = {**os.environ, 'PYTHONPATH': REPO, 'COLUMNS': '120'}
  process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=follower,
                             stdout=follower, stderr=follower,
                             close_fds=True)
  os.close(follower)
  chunks, deadline = [], time.monotonic() + timeout
  while time.monotonic() < deadline:
    ready, _, _ = select.select([leader], [], [], 1.0)
    if ready:
      try:
        data = os.read(leader, 1 << 16)
      except OSError:  # The terminal closed: the process is done.
        break
      if not data:
        break
      chunks.append(data)
    elif process.poll() is not None:
      break
  else:
    process.kill()
  os.close(leader)
  code = process.wait(timeout=60)
  return code, b''.join(chunks).decode('utf-8', 'replace')


def _frames(text):
  """The lines a terminal showed: each '\\r' redraw is one frame."""
  return [f for line in text.split('\n') for f in line.split('\r') if f]


@pytest.mark.slow
def test_every_mode_runs_in_a_terminal(tmp_path):
  work = tmp_path / 'work'
  work.mkdir()

  # The default job (flags/quickstart.cfg) on tiny data, as a process.
  code, out = in_terminal([sys.executable, MAIN, *TINY], work)
  assert code == 0, out[-3000:]
  assert 'Traceback' not in out
  run = work / 'runs' / 'quickstart'
  for name in ('robustness.md', 'report.html', 'metrics.jsonl'):
    assert (run / name).exists(), name
  frames = _frames(out)
  # Training and attacks drew their progress line, redrawn in place.
  assert any(f.startswith('epoch 1/1 100% [') for f in frames)
  assert any(re.match(r'robustness +\d+% \[', f) and 'on batch' in f
             for f in frames), frames[-40:]
  assert 'Robustness on 16 test images' in out
  config_before = (run / 'config.json').read_bytes()

  # Every other mode, in one process whose terminal is the same.
  commands = [
      ['--mode=evaluate'],
      ['--mode=audit', '--flagfile=attacks/audit_cpu.cfg', '--apgd_steps=3',
       '--square_queries=5', '--audit_sweep_examples=8', '--audit_steps=2,3',
       '--audit_eps_multiples=1,4', '--audit_noise_draws=2'],
      ['--mode=certify', '--eval_examples=4', '--certify_n0=5',
       '--certify_n=20', '--certify_batch_size=20'],
      ['--mode=grid', '--grid=seed_table/1_regular.cfg',
       f'--grid_overrides={tmp_path / "tiny.cfg"}'],
      ['--mode=export'],
  ]
  (tmp_path / 'tiny.cfg').write_text(
      '\n'.join(TINY + ['--output_dir=runs/seed_table/1_regular']) + '\n')
  (tmp_path / 'commands.json').write_text(json.dumps(commands))
  code, out = in_terminal([sys.executable, '-c', _DRIVER,
                           str(tmp_path / 'commands.json')], work)
  assert code == 0, out[-3000:]
  exits = re.findall(r'TERMINAL-EXIT (\d+)', out)
  assert exits == ['0'] * len(commands), out[-3000:]
  assert 'Traceback' not in out
  frames = _frames(out)
  for title in ('robustness', 'audit table', 'audit eps-0.4', 'certify'):
    assert any(re.match(rf'{re.escape(title)} +\d+% \[', f) for f in frames), (
        title)
  for name in ('audit.md', 'audit.json', 'certify.md', 'report.html'):
    assert (run / name).exists(), name
  assert (work / 'runs' / 'seed_table' / 'grid.md').exists()
  assert (work / 'saved_models' / 'quickstart' / '1' / 'saved_model.pb').exists()
  # Evaluate, audit, certify and export left the run's settings alone.
  assert (run / 'config.json').read_bytes() == config_before

  # predict, as a process, through a stand-in TF Serving.
  with ServingStandIn({'quickstart': str(work / 'saved_models' /
                                         'quickstart')}) as server:
    code, out = in_terminal(
        [sys.executable, MAIN, '--mode=predict',
         f'--server={server.rest_address}'], work)
  assert code == 0, out[-3000:]
  assert re.search(r'accuracy \d+\.\d+% \(\d+ of 16\)', out), out[-2000:]
  assert any(re.match(r'predict +\d+% \[', f) for f in _frames(out))

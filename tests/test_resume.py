"""Exact resume of stochastic training, killed at a random moment or stopped.

A run killed (SIGKILL) after a mid-epoch checkpoint and run again must end
bit-identical to one that was never interrupted, also when every step draws
randomness: the adversarial mixture's branches, noise and PGD starts, and
the LWTA winners and IBP utilities of the model.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = f'--flagfile={os.path.join(REPO, "flags", "smoke.cfg")}'
TINY = [SMOKE, '--train_examples=512', '--eval_examples=64',
        '--batch_size=16', '--eval_batch_size=64', '--epochs=2',
        '--seed_cnn_filters=4,8', '--seed_cnn_units=16',
        '--checkpoint_every_steps=8', '--keep_checkpoints=2',
        '--log_every_steps=1', '--strategy=one_device']
STEPS_PER_EPOCH = 512 // 16


def main_command(*args):
  return [sys.executable, os.path.join(REPO, 'main.py'), *args]


def run_main(*args, timeout=600):
  result = subprocess.run(main_command(*args), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def checkpoint_step(out) -> int:
  state = out / 'checkpoints' / 'checkpoint'
  text = state.read_text() if state.exists() else ''
  latest = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', text, re.M)
  return int(latest.group(1)) if latest else 0


def start_and_signal(args, out, after_step, signum):
  """Starts a run, sends `signum` once checkpoint `after_step` exists."""
  proc = subprocess.Popen(main_command(*args, f'--output_dir={out}'), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 300
  sent_at = None
  while time.time() < deadline and proc.poll() is None:
    if checkpoint_step(out) >= after_step:
      proc.send_signal(signum)
      sent_at = checkpoint_step(out)
      break
    time.sleep(0.02)
  stdout, stderr = proc.communicate(timeout=300)
  assert sent_at is not None, 'the run ended before the signal: ' + stderr[-2000:]
  return proc.returncode, stdout, stderr, sent_at


def final_variables(out):
  """{name: array} of the run's last checkpoint."""
  path = tf.train.latest_checkpoint(str(out / 'checkpoints'))
  reader = tf.train.load_checkpoint(path)
  return path, {name: reader.get_tensor(name)
                for name in reader.get_variable_to_shape_map()
                if not name.startswith(('_CHECKPOINTABLE', 'save_counter'))}


def metrics(out):
  return [json.loads(l) for l in (out / 'metrics.jsonl').read_text().splitlines()]


def assert_same_run(got, want):
  path_got, variables_got = final_variables(got)
  path_want, variables_want = final_variables(want)
  assert os.path.basename(path_got) == os.path.basename(path_want)
  assert set(variables_got) == set(variables_want)
  different = [name for name in variables_want if not np.array_equal(
      variables_got[name], variables_want[name])]
  assert not different, different
  for a, b in zip(metrics(got), metrics(want)):
    for key in a:
      if not key.endswith(('seconds', 'images_per_sec')):
        assert a[key] == b[key], (a['epoch'], key)


@pytest.mark.slow
@pytest.mark.parametrize('extra', [
    ['--mixture=seed', '--noise_sigma=0.2'],
    ['--activation=lwta', '--ibp', '--pni=activation'],
], ids=['mixture_seed', 'lwta_ibp_pni'])
def test_killed_stochastic_run_ends_bit_identical(tmp_path, extra):
  args = [*TINY, *extra]
  run_main(*args, f'--output_dir={tmp_path / "reference"}')
  # Killed mid-epoch 2, well after a checkpoint: the steps since are lost
  # and must be redone with the same draws.
  code, _, _, killed_at = start_and_signal(
      args, tmp_path / 'killed', STEPS_PER_EPOCH + 8, signal.SIGKILL)
  assert code == -signal.SIGKILL
  resumed = run_main(*args, f'--output_dir={tmp_path / "killed"}')
  restored = [int(s) for s in re.findall(r'Resumed .*ckpt-\d+ \(step (\d+)',
                                         resumed.stdout)]
  assert restored and restored[0] >= killed_at
  assert restored[0] % STEPS_PER_EPOCH  # Inside an epoch.
  assert_same_run(tmp_path / 'killed', tmp_path / 'reference')
  if '--mixture=seed' in extra:  # Branch shares count the whole run.
    shares = {k: v for k, v in metrics(tmp_path / 'killed')[-1].items()
              if k.startswith('mixture/')}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares == {k: v for k, v in metrics(
        tmp_path / 'reference')[-1].items() if k.startswith('mixture/')}


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_and_exits_with_one_line(tmp_path, signum):
  args = [*TINY, '--activation=lwta', '--learning_rate=0.01',
          '--checkpoint_every_steps=0']
  # Without periodic checkpoints, the first epoch's end is the first one.
  code, _, stderr, _ = start_and_signal(
      args, tmp_path / 'stopped', STEPS_PER_EPOCH, signum)
  assert code == 128 + signum
  name = signal.Signals(signum).name
  lines = [l for l in stderr.splitlines() if name in l]
  assert len(lines) == 1 and 'run the same command' in lines[0].lower(), stderr
  assert 'Traceback' not in stderr
  step = int(re.search(r'at step (\d+)', lines[0]).group(1))
  assert checkpoint_step(tmp_path / 'stopped') == step
  if signum == signal.SIGTERM:  # And it goes on as if never stopped.
    run_main(*args, f'--output_dir={tmp_path / "stopped"}')
    run_main(*args, f'--output_dir={tmp_path / "reference"}')
    assert_same_run(tmp_path / 'stopped', tmp_path / 'reference')

"""A run folder is the record: opened by mode, damaged files, locks, full disk."""

import dataclasses
import gzip
import json
import os
import struct
import subprocess
import sys

from absl import flags
import numpy as np
import pytest
import tensorflow as tf

from cli_fixtures import parse_command
from tf_slwta import cli
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.modes import evaluate as evaluate_mode
from tf_slwta.training import checkpoints
from tf_slwta.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_DEVICE = lambda: tf.distribute.OneDeviceStrategy('/cpu:0')


def tiny(output_dir, epochs=1, **model):
  return config_lib.ExperimentConfig(
      output_dir=str(output_dir),
      data=config_lib.DataConfig(dataset='synthetic', train_examples=128,
                                 eval_examples=64, batch_size=32,
                                 eval_batch_size=64),
      model=config_lib.ModelConfig(seed_cnn_filters=(4, 8), seed_cnn_units=16,
                                   **model),
      train=config_lib.TrainConfig(epochs=epochs, learning_rate=0.05,
                                   checkpoint_every_steps=2, keep_checkpoints=5,
                                   log_every_steps=2, strategy='one_device'))


parsed = parse_command


# ---------------------------------------------------------------------------
# Opening a run by its folder.


def test_evaluate_takes_the_model_from_the_run_and_attacks_from_the_flags(
    tmp_path):
  trained = tiny(tmp_path)
  run_folder.RunFolder(str(tmp_path)).write_config(trained)
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'checkpoints' / 'ckpt-4.index').write_text('')
  # The README's command: a flagfile of attacks only, and training settings
  # (learning rate 0.1 by default) that differ from the run's.
  config, given = parsed('--mode=evaluate', '--flagfile=flags/attacks/strong.cfg',
                         f'--output_dir={tmp_path}', '--eot_samples=1',
                         '--mc_samples=1')
  folder = run_folder.RunFolder(str(tmp_path))
  merged, notes = folder.settings_for(config, given)
  assert merged.model == trained.model and merged.data.dataset == 'synthetic'
  assert merged.train.learning_rate == 0.05
  assert merged.attack.pgd_steps == config.attack.pgd_steps >= 50
  assert merged.attack.mc_samples == 1 and not notes
  # A training flag that differs is ignored, with a note...
  config, given = parsed('--mode=evaluate', f'--output_dir={tmp_path}',
                         '--learning_rate=0.3')
  merged, notes = folder.settings_for(config, given)
  assert merged.train.learning_rate == 0.05
  assert notes and '--learning_rate=0.3' in notes[0]
  # ...a test-time model setting applies, another model is refused.
  config, given = parsed('--mode=evaluate', f'--output_dir={tmp_path}',
                         '--lwta_test_temperature=0.5')
  assert folder.settings_for(config, given)[0].model.lwta_test_temperature == 0.5
  config, given = parsed('--mode=evaluate', f'--output_dir={tmp_path}',
                         '--activation=lwta')
  with pytest.raises(run_folder.RunMismatch,
                     match=r'--activation=lwta \(the run has relu\)'):
    folder.settings_for(config, given)


def test_predict_asks_for_the_version_and_name_given(tmp_path):
  run_folder.RunFolder(str(tmp_path)).write_config(tiny(tmp_path))
  folder = run_folder.RunFolder(str(tmp_path))
  config, given = parsed('--mode=predict', f'--output_dir={tmp_path}',
                         '--export_version=3', '--export_name=served')
  merged, notes = folder.settings_for(config, given)
  assert (merged.serve.version, merged.serve.model_name) == (3, 'served')
  assert not notes


def test_train_resumes_from_the_record_and_refuses_real_conflicts(tmp_path):
  trained = tiny(tmp_path)
  run_folder.RunFolder(str(tmp_path)).write_config(trained)
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'checkpoints' / 'ckpt-4.index').write_text('')
  folder = run_folder.RunFolder(str(tmp_path))
  config, given = parsed(f'--output_dir={tmp_path}', '--epochs=12')
  merged, _ = folder.settings_for(config, given)
  assert merged.train.epochs == 12
  assert merged.model == trained.model and merged.data == trained.data
  config, given = parsed(f'--output_dir={tmp_path}', '--learning_rate=0.1')
  with pytest.raises(run_folder.RunMismatch, match='--learning_rate=0.1'):
    folder.settings_for(config, given)


def test_the_default_job_is_put_in_only_for_a_new_training_run(tmp_path,
                                                                monkeypatch):
  monkeypatch.chdir(tmp_path)
  default = cli.with_default_flagfile
  assert default(['m', '--epochs=2'], 'q.cfg') == ['m', '--flagfile=q.cfg',
                                                   '--epochs=2']
  assert default(['m', '--mode=evaluate'], 'q.cfg') == ['m', '--mode=evaluate']
  run_folder.RunFolder('runs/quickstart').write_config(tiny('runs/quickstart'))
  assert default(['m', '--epochs=12'], 'q.cfg') == ['m', '--epochs=12']


def test_nested_flagfiles_are_read_relative_to_their_file(tmp_path):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'inner.cfg').write_text('--epochs=4\n# a comment\n')
  (tmp_path / 'outer.cfg').write_text('--flagfile=sub/inner.cfg\n--seed=3\n')
  argv = cli.expand_flagfiles(['main.py', f'--flagfile={tmp_path}/outer.cfg',
                               '--seed=5'])
  assert argv == ['main.py', '--epochs=4', '--seed=3', '--seed=5']
  (tmp_path / 'loop.cfg').write_text(f'--flagfile={tmp_path}/loop.cfg\n')
  with pytest.raises(cli.FlagfileError, match='includes itself'):
    cli.expand_flagfiles(['main.py', f'--flagfile={tmp_path}/loop.cfg'])
  (tmp_path / 'bad.cfg').write_text('--flagfile=missing.cfg\n')
  with pytest.raises(cli.FlagfileError, match=r'missing.cfg \(named in'):
    cli.expand_flagfiles(['main.py', f'--flagfile={tmp_path}/bad.cfg'])


# ---------------------------------------------------------------------------
# Bad values, refused before any work with one line naming the flag.


@pytest.mark.parametrize('args,message', [
    (['--fgsm_eps=nan'], '--fgsm_eps=nan is not a finite number'),
    (['--pgd_eps=1e9'], '--pgd_eps=1000000000.0 is over the limit of 1'),
    (['--pgd_steps=1000000000000'], '--pgd_steps=1000000000000 is over'),
    (['--eval_examples=20000'], 'fashion_mnist has only 10000 test images'),
    (['--mode=predict', '--server=not a host'], "--server='not a host' is "
                                                'not HOST:PORT'),
    (['--pni=weight', '--ibp'], 'use --pni=activation with --ibp'),
    (['--learning_rate=inf'], 'not a finite number'),
])
def test_bad_values_get_one_line_naming_the_flag(args, message):
  with pytest.raises(flags.Error, match=message.replace('(', r'\(')) as err:
    parsed(*args)
  assert '\n' not in str(err.value) and len(str(err.value)) < 300


def test_output_dir_that_is_a_file_or_read_only(tmp_path):
  (tmp_path / 'file').write_text('')
  with pytest.raises(run_folder.RunFolderError, match='is a file'):
    run_folder.RunFolder(str(tmp_path / 'file')).check_usable()
  with pytest.raises(run_folder.RunFolderError, match='cannot be written'):
    run_folder.probe_writable('/proc/no_such_run', '--export_dir')


# ---------------------------------------------------------------------------
# Damaged records: one line naming the file, and nothing lost.


@pytest.mark.parametrize('text,problem', [('', 'it is empty'),
                                          ('{"mode": "tr', 'line 1')])
def test_damaged_config_json_is_named(tmp_path, text, problem):
  (tmp_path / 'config.json').write_text(text)
  with pytest.raises(run_folder.RunFolderError,
                     match=f'config.json is damaged \\(.*{problem}'):
    run_folder.RunFolder(str(tmp_path)).saved_settings()


def _without(section):
  def edit(saved):
    del saved[section]
  return edit


def _set(section, field, value):
  def edit(saved):
    saved[section][field] = value
  return edit


@pytest.mark.parametrize('edit,problem', [
    (_without('model'), 'has no "model" section'),
    (_without('data'), 'has no "data" section'),
    (_without('train'), 'has no "train" section'),
    (lambda saved: saved.update(model=[4, 8]),
     'has a list for its "model" section'),
    (_set('train', 'epochs', 'three'),
     'has train.epochs = "three" \\(text\\), where a whole number belongs'),
    (_set('train', 'epochs', 2.5), 'has train.epochs = 2.5'),
    (_set('model', 'ibp', 1), 'has model.ibp = 1 .*where true/false belongs'),
    (_set('model', 'seed_cnn_filters', '4,8'), 'has .*where a list belongs'),
    (_set('data', 'batch_size', None), 'has data.batch_size = null'),
], ids=['no_model', 'no_data', 'no_train', 'model_list', 'epochs_text',
        'epochs_fraction', 'ibp_number', 'filters_text', 'batch_null'])
def test_a_partial_config_json_is_named_not_the_users_flags(tmp_path, edit,
                                                            problem):
  run_folder.RunFolder(str(tmp_path)).write_config(tiny(tmp_path))
  (tmp_path / 'checkpoints').mkdir()
  (tmp_path / 'checkpoints' / 'ckpt-4.index').write_text('')
  saved = json.loads((tmp_path / 'config.json').read_text())
  edit(saved)
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  for args in ([], ['--mode=evaluate'], ['--mode=export']):
    config, given = parsed(*args, f'--output_dir={tmp_path}')
    with pytest.raises(run_folder.RunFolderError,
                       match=f'config.json {problem}') as err:
      run_folder.RunFolder(str(tmp_path)).settings_for(config, given)
    message = str(err.value)
    assert '\n' not in message and 'Put back the config.json' in message
  # What older runs lack is not a problem: a section added since, a field.
  saved = tiny(tmp_path).to_dict()
  del saved['serve'], saved['model']['seed_cnn_batch_norm']
  saved['train']['learning_rate'] = 1  # A whole number for a float.
  assert run_folder.settings_problem(saved) is None


def test_cut_metrics_line_is_set_aside_and_training_goes_on(tmp_path, capsys):
  loop.train(tiny(tmp_path), ONE_DEVICE())
  path = tmp_path / 'metrics.jsonl'
  good = path.read_text()
  path.write_text(good + '{"epoch": 2, "train/lo')  # A write cut short.
  record = loop.train(tiny(tmp_path, epochs=2), ONE_DEVICE())
  assert record['epoch'] == 2
  assert 'had 1 damaged line(s)' in capsys.readouterr().out
  assert [json.loads(l)['epoch'] for l in path.read_text().splitlines()] == [1, 2]
  assert (tmp_path / 'metrics.jsonl.damaged').read_text().endswith('train/lo')


def test_a_finished_run_keeps_every_field_of_its_results(tmp_path):
  first = loop.train(tiny(tmp_path), ONE_DEVICE())
  again = loop.train(tiny(tmp_path), ONE_DEVICE())
  assert set(again) == set(first) and again['epoch'] == 1
  with open(tmp_path / 'results.json') as f:
    assert set(json.load(f)) == set(first)
  with pytest.raises(run_folder.RunMismatch, match='--epochs=2 or more'):
    loop.train(tiny(tmp_path, epochs=2), ONE_DEVICE())  # 8 steps...
    loop.train(tiny(tmp_path, epochs=1), ONE_DEVICE())  # ...then fewer.


def _steps(directory):
  return sorted(int(n.split('-')[1].split('.')[0]) for n in os.listdir(directory)
                if n.endswith('.index'))


@pytest.mark.parametrize('damage', ['truncated', 'deleted'])
def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(
    tmp_path, capsys, damage):
  loop.train(tiny(tmp_path), ONE_DEVICE())  # Checkpoints 2 and 4.
  directory = tmp_path / 'checkpoints'
  assert _steps(directory) == [2, 4]
  newest = [directory / n for n in os.listdir(directory)
            if n.startswith('ckpt-4.')]
  for path in newest:
    if damage == 'deleted':
      path.unlink()
    elif path.name.startswith('ckpt-4.data'):
      path.write_bytes(path.read_bytes()[:100])
  capsys.readouterr()
  record = loop.train(tiny(tmp_path, epochs=2), ONE_DEVICE())
  out = capsys.readouterr().out
  assert 'Resumed' in out and 'ckpt-2 (step 2' in out
  assert ('is damaged' if damage == 'truncated' else 'is missing') in out
  assert out.count('note: ') == 1  # One line for the one checkpoint.
  assert record['epoch'] == 2 and record['step'] == 8
  if damage == 'truncated':  # Kept aside, not deleted.
    assert sorted(os.listdir(directory / 'damaged')) == sorted(
        p.name for p in newest)


def _files(folder):
  """{relative path: bytes} of every file under `folder`."""
  return {os.path.relpath(os.path.join(root, name), folder):
          open(os.path.join(root, name), 'rb').read()
          for root, _, names in os.walk(folder) for name in names}


def _truncate_checkpoints(directory, steps):
  for step in steps:
    data = directory / f'ckpt-{step}.data-00000-of-00001'
    data.write_bytes(data.read_bytes()[:100])


def test_a_run_with_no_intact_checkpoint_is_refused_and_left_as_it_is(
    tmp_path):
  loop.train(tiny(tmp_path), ONE_DEVICE())  # Checkpoints 2 and 4.
  directory = tmp_path / 'checkpoints'
  _truncate_checkpoints(directory, (2, 4))
  before = _files(tmp_path)
  for attempt in (lambda: loop.train(tiny(tmp_path, epochs=2), ONE_DEVICE()),
                  lambda: evaluate_mode.evaluate_checkpoint(tiny(tmp_path),
                                                            ONE_DEVICE())):
    with pytest.raises(checkpoints.NoIntactCheckpoint) as err:
      attempt()
    message = str(err.value)
    assert '\n' not in message
    assert 'every checkpoint in' in message and 'ckpt-4: ' in message
    assert 'ckpt-2: ' in message and 'Nothing was changed' in message
    assert f'delete {tmp_path} to start over' in message
    assert _files(tmp_path) == before  # Records and checkpoints untouched.


def test_checkpoints_gone_from_a_trained_run_are_refused(tmp_path):
  loop.train(tiny(tmp_path), ONE_DEVICE())
  directory = tmp_path / 'checkpoints'
  for name in os.listdir(directory):  # The state file stays behind.
    if name.startswith('ckpt-'):
      os.remove(directory / name)
  with pytest.raises(checkpoints.NoIntactCheckpoint,
                     match=r'gone from .* \(ckpt-2, ckpt-4\)'):
    loop.train(tiny(tmp_path, epochs=2), ONE_DEVICE())
  # Damaged ones moved aside by an earlier run count as the run's too.
  os.remove(directory / 'checkpoint')
  (directory / 'damaged').mkdir()
  (directory / 'damaged' / 'ckpt-4.index').write_text('')
  with pytest.raises(checkpoints.NoIntactCheckpoint,
                     match=r'\(damaged/ckpt-4\)'):
    loop.train(tiny(tmp_path, epochs=2), ONE_DEVICE())


@pytest.mark.parametrize('content,problem', [
    (bytes(range(256)) * 2, 'not text'),
    (b'model_checkpoint_path: "ckpt-4"\nall_model_chec', 'not a checkpoint'),
    (b'', 'it names no checkpoint')])
def test_a_damaged_checkpoint_state_file_is_set_aside_and_rebuilt(
    tmp_path, capsys, content, problem):
  loop.train(tiny(tmp_path), ONE_DEVICE())
  state_file = tmp_path / 'checkpoints' / 'checkpoint'
  state_file.write_bytes(content)
  capsys.readouterr()
  record = loop.train(tiny(tmp_path, epochs=2), ONE_DEVICE())
  out = capsys.readouterr().out
  assert f'checkpoint is damaged ({problem}' in out
  assert 'Resumed' in out and 'ckpt-4 (step 4' in out
  assert record['epoch'] == 2 and record['step'] == 8
  assert (tmp_path / 'checkpoints' / 'checkpoint.damaged').read_bytes() == (
      content)
  assert tf.train.latest_checkpoint(str(tmp_path / 'checkpoints')).endswith(
      'ckpt-8')


def _stopped_at(output_dir, step, epochs_recorded):
  """Makes a 3-epoch run (4 steps an epoch) look stopped at `step`.

  Removes the checkpoints after `step`, the metrics lines after epoch
  `epochs_recorded` and results.json, as a kill would have left them.
  """
  loop.train(tiny(output_dir, epochs=3), ONE_DEVICE())
  directory = output_dir / 'checkpoints'
  for name in os.listdir(directory):
    if name.startswith('ckpt-') and int(name.split('.')[0][5:]) > step:
      os.remove(directory / name)
  os.remove(directory / 'checkpoint')  # Rebuilt from the files.
  os.remove(output_dir / 'results.json')
  metrics = (output_dir / 'metrics.jsonl').read_text().splitlines()
  (output_dir / 'metrics.jsonl').write_text(
      ''.join(l + '\n' for l in metrics[:epochs_recorded]))


@pytest.mark.parametrize('step,recorded,expected', [
    (6, 1, 'stopped at step 6 of 12 (3 epochs of 4 steps): epoch 2 of 3 not '
           'finished'),
    # Killed between epoch 2's metrics line and its checkpoint.
    (4, 2, 'stopped at step 4 of 12 (3 epochs of 4 steps): 1 of 3 epochs '
           'trained'),
    # No metrics line: the steps per epoch come from config.json.
    (6, 0, 'stopped at step 6 of 12 (3 epochs of 4 steps): epoch 2 of 3 not '
           'finished'),
    (12, 3, 'trained 3 epochs (step 12)')])
def test_an_unfinished_run_is_told_from_its_folder(tmp_path, step, recorded,
                                                   expected):
  _stopped_at(tmp_path, step, recorded)
  status = run_folder.training_status(str(tmp_path))
  assert status.description == expected
  assert status.finished == (step == 12)
  assert (status.warning is None) == (step == 12)
  assert 'tensorflow' not in run_folder.__dict__  # Plain Python.


def test_modes_and_the_report_warn_of_an_unfinished_run(tmp_path, capsys,
                                                        monkeypatch):
  from tf_slwta.modes import audit as audit_mode  # pylint: disable=g-import-not-at-top
  from tf_slwta.modes import certify as certify_mode  # pylint: disable=g-import-not-at-top
  from tf_slwta.modes import export as export_mode  # pylint: disable=g-import-not-at-top
  from tf_slwta.training import state as state_lib  # pylint: disable=g-import-not-at-top
  _stopped_at(tmp_path, 6, 1)
  config = dataclasses.replace(tiny(tmp_path, epochs=3), mode='evaluate',
                               attack=config_lib.AttackConfig(attacks=()))
  folder = run_folder.RunFolder(str(tmp_path))
  capsys.readouterr()
  evaluate_mode.run(config, folder, ONE_DEVICE())
  warning = ('warning: the training of {} is not finished: stopped at step 6 '
             'of 12 (3 epochs of 4 steps): epoch 2 of 3 not finished; the model '
             'is used as it stands. Run python main.py '
             '--output_dir={} to finish it.'.format(tmp_path, tmp_path))
  assert warning in capsys.readouterr().out.splitlines()
  page = (tmp_path / 'report.html').read_text()
  assert '<div class="warning"><p><b>Warning: training is not finished' in page
  assert page.index('training is not finished') < page.index('<h2>Settings')
  assert ('<td>stopped at step 6 of 12 (3 epochs of 4 steps): epoch 2 of 3 '
          'not finished, mixture clean</td>') in page
  # The other modes say it before they load the model.
  def stop(*args, **kwargs):
    raise RuntimeError('stopped here')
  monkeypatch.setattr(state_lib, 'restore_model', stop)
  for mode, runner in (('audit', audit_mode.run), ('certify', certify_mode.run),
                       ('export', export_mode.run)):
    mode_config = dataclasses.replace(config, mode=mode, export=(
        config_lib.ExportConfig(export_dir=str(tmp_path / 'exports'))))
    with pytest.raises(RuntimeError, match='stopped here'):
      runner(mode_config, folder, *([ONE_DEVICE()] if mode != 'export' else []))
    assert warning in capsys.readouterr().out.splitlines(), mode
  # Finished: no warning, and the page says the epochs.
  loop.train(tiny(tmp_path, epochs=3), ONE_DEVICE())
  monkeypatch.undo()
  capsys.readouterr()
  evaluate_mode.run(config, folder, ONE_DEVICE())
  assert 'warning' not in capsys.readouterr().out
  page = (tmp_path / 'report.html').read_text()
  assert 'not finished' not in page and '<td>3 epochs, mixture clean' in page


def test_checkpoints_of_another_model_are_refused(tmp_path):
  loop.train(tiny(tmp_path / 'lwta', activation='lwta'), ONE_DEVICE())
  other = tiny(tmp_path / 'lwta')  # relu: same variables, another model.
  run_folder.RunFolder(other.output_dir).write_config(other)
  with pytest.raises(run_folder.RunMismatch,
                     match="model.activation: 'lwta' in the checkpoint"):
    evaluate_mode.evaluate_checkpoint(other, ONE_DEVICE())
  with pytest.raises(run_folder.RunMismatch, match='Put back the config.json'):
    loop.train(tiny(tmp_path / 'lwta', epochs=2), ONE_DEVICE())


def test_a_second_run_on_one_folder_is_refused_and_a_stale_lock_noted(tmp_path):
  folder = run_folder.RunFolder(str(tmp_path))
  with folder.locked():
    with run_folder.RunFolder(str(tmp_path)).locked():  # Re-entrant here.
      pass
    other = subprocess.run(
        [sys.executable, '-c', 'import sys\nfrom tf_slwta import folder_lock\n'
         'with folder_lock.locked(sys.argv[1]): pass', str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert other.returncode == 1 and 'RunInUse' in other.stderr
    assert f'is in use by process {os.getpid()}' in other.stderr
  # A process killed while holding it leaves its note but not the lock.
  (tmp_path / '.lock').write_text(json.dumps(
      {'pid': 99999999, 'host': 'h', 'started': 'then', 'command': 'main.py'}))
  notes = []
  with folder.locked(announce=notes.append):
    pass
  assert notes and 'process 99999999' in notes[0] and 'no longer running' in notes[0]


# ---------------------------------------------------------------------------
# Data that is not what it claims.


def _idx(path, array):
  header = struct.pack('>HBB', 0, 8, array.ndim) + struct.pack(
      f'>{array.ndim}I', *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_data_dir_must_be_complete_and_labels_in_range(tmp_path):
  images = np.zeros((5, 28, 28), np.uint8)
  for split, (image_file, label_file) in data_lib.FASHION_MNIST_FILES.items():
    _idx(tmp_path / image_file, images)
    _idx(tmp_path / label_file, np.array([0, 1, 2, 12, 3]))
  data = config_lib.DataConfig(data_dir=str(tmp_path))
  with pytest.raises(data_lib.DataError, match=r'labels outside \[0, 10\) \(12\)'):
    data_lib.load_arrays(data, 'test')
  os.remove(tmp_path / 't10k-labels-idx1-ubyte.gz')
  with pytest.raises(data_lib.DataError,
                     match='lacks t10k-labels-idx1-ubyte.gz'):
    data_lib.load_arrays(data, 'test')


# ---------------------------------------------------------------------------
# A full disk.


@pytest.mark.skipif(os.geteuid() != 0, reason='mounting a tmpfs needs root')
def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path):
  disk = tmp_path / 'disk'
  disk.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=3m', 'tmpfs',
                     str(disk)], capture_output=True).returncode:
    pytest.skip('cannot mount a tmpfs here')
  try:
    out = disk / 'run'
    filled = []
    loop.train(tiny(out, epochs=3), ONE_DEVICE())  # 12 steps: it fits.
    with open(disk / 'filler', 'wb', buffering=0) as f:  # Fill the disk...
      try:
        while True:
          f.write(b'\0' * 4096)
      except OSError:
        filled.append(f.tell())
    assert filled
    # ...but for room for the small files (a checkpoint takes ~60 KB).
    os.truncate(disk / 'filler', filled[0] - 32768)
    steps_before = _steps(out / 'checkpoints')
    with pytest.raises(loop.OutOfSpace, match='No space left') as err:
      loop.train(tiny(out, epochs=4), ONE_DEVICE())
    assert 'ckpt-12 is intact' in str(err.value)
    assert _steps(out / 'checkpoints') == steps_before
    os.remove(disk / 'filler')
    assert loop.train(tiny(out, epochs=4), ONE_DEVICE())['epoch'] == 4
  finally:
    # Lazily: TensorBoard's writer may still hold a file open on it.
    subprocess.run(['umount', '-l', str(disk)], check=False)


def test_refusals_come_before_tensorflow_loads(tmp_path):
  result = subprocess.run(
      [sys.executable, '-X', 'importtime', os.path.join(REPO, 'main.py'),
       '--pgd_eps=0.1', '--pgd_alpha=0.2', f'--output_dir={tmp_path}/x'],
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if not l.startswith('import time:')]
  assert lines == ['error: --pgd_alpha=0.2 is larger than pgd_eps=0.1; use a '
                   'step <= eps.']
  assert not [l for l in result.stderr.splitlines()
              if l.startswith('import time:') and '| tensorflow' in l]
  assert not (tmp_path / 'x').exists()


def test_a_remote_run_folder_goes_through_tensorflow_file_systems():
  folder = run_folder.RunFolder('ram://runs/remote')  # As gs:// would.
  config = tiny(folder.path)
  folder.write_config(config)
  assert config_lib.ExperimentConfig.from_dict(folder.saved_settings()) == config
  folder.append_metrics({'epoch': 1, 'train/loss': 1.0})
  folder.append_metrics({'epoch': 2, 'train/loss': 0.5})
  assert [r['epoch'] for r in folder.read_metrics()] == [1, 2]
  with folder.locked():  # No lock there, and no error.
    folder.check_usable()
  merged, _ = folder.settings_for(
      dataclasses.replace(config, mode='evaluate'), {})
  assert merged.model == config.model

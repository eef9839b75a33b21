"""Evaluation spread over devices and workers, and resumed after a kill."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta import run_folder
from tf_slwta.evaluation import distributed
from tf_slwta.evaluation import records
from tf_slwta.evaluation import robustness
from tf_slwta.modes import train as train_mode
from tf_slwta.training import tf_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACKS = config_lib.AttackConfig(
    attacks=('fgsm', 'pgd_linf'), fgsm_eps=0.05, pgd_eps=0.05,
    pgd_alpha=0.02, pgd_steps=3, eot_samples=2, mc_samples=2,
    decision_repeats=2,
    # A sampled mode and a surrogate one: what the devices must agree on is
    # the same in the other three, which cost this module a minute.
    gradient_modes=('expected', 'sample'))


def _weights(activation):
  keras.utils.set_random_seed(1)
  model = models.build_model(
      config_lib.ModelConfig(seed_cnn_filters=(4, 8), seed_cnn_units=16,
                             activation=activation),
      data_lib.dataset_info('synthetic'))
  return model.get_weights()


def _copies(activation, devices):
  weights = _weights(activation)

  def build(device):
    with tf.device(device):
      model = models.build_model(
          config_lib.ModelConfig(seed_cnn_filters=(4, 8), seed_cnn_units=16,
                                 activation=activation),
          data_lib.dataset_info('synthetic'))
      model.set_weights(weights)
    return model

  return distributed.replicas(build, devices)


@pytest.fixture(scope='module')
def test_set():
  return data_lib.make_synthetic('test', 40)


def _evaluate(replicas, test_set, **kwargs):
  outcomes = {}
  rows = robustness.evaluate_robustness(
      None, *test_set, ATTACKS, batch_size=10, verbose=False,
      replicas=replicas, outcomes=outcomes, **kwargs)
  return rows, outcomes


def _untimed(rows):
  return [{k: v for k, v in r.items() if k != 'seconds'} for r in rows]


def _assert_same(a, b):
  assert a[1].keys() == b[1].keys()
  for name in a[1]:
    np.testing.assert_array_equal(a[1][name], b[1][name], err_msg=name)
  assert _untimed(a[0]) == _untimed(b[0])


@pytest.mark.parametrize('activation', ['relu', 'lwta'])
def test_two_devices_give_the_table_of_one(activation, test_set):
  one = _evaluate(_copies(activation, ['/cpu:0']), test_set)
  two = _evaluate(_copies(activation, ['/cpu:0', '/cpu:1']), test_set)
  _assert_same(one, two)
  if activation == 'lwta':  # Stochastic: repeated decisions, every mode.
    assert one[0][0]['repeats'] == 2 and 'expected' in one[0][0][
        'gradient_modes']


def _part_seed(batch, part):
  """The seed a replica is reset to for `part` of batch `batch` (ATTACKS'
  seed is 0): part 0 is the clean verdict, 1.. the attacks in order."""
  return batch * 1_009 + part


def test_a_killed_evaluation_resumes_to_the_same_table(tmp_path, test_set):
  reference = _evaluate(_copies('lwta', ['/cpu:0']), test_set)
  record = records.BatchRecords(str(tmp_path / 'batches'), {'try': 1})
  replica = _copies('lwta', ['/cpu:0'])[0]
  seeds = []

  def reseed(seed, dies_at=None):
    seeds.append(seed)
    if seed == dies_at:
      raise KeyboardInterrupt('killed')
    replica.reseed(seed)

  # Killed as batch 1's third attack starts.
  with pytest.raises(KeyboardInterrupt):
    _evaluate([robustness.Replica(replica.logits_fn, None, lambda s: reseed(
        s, _part_seed(1, 3)))], test_set, record=record)
  assert [i for i in range(4) if record.has(i)] == [0]
  # Batch 1's first two attacks were kept, each in a file of its own.
  parts = sorted(os.listdir(tmp_path / 'batches' / 'batch-00001'))
  assert parts == ['fgsm--expected.npz', 'fgsm--sample.npz']
  before = os.path.getmtime(record.path(0))
  seeds.clear()
  resumed = _evaluate([robustness.Replica(replica.logits_fn, None, reseed)],
                      test_set, record=record)
  _assert_same(reference, resumed)
  # Batch 0 was read back, batch 1's two attacks too: none ran again.
  assert os.path.getmtime(record.path(0)) == before
  assert not any(s < 1_009 for s in seeds)
  assert _part_seed(1, 1) not in seeds and _part_seed(1, 2) not in seeds
  assert _part_seed(1, 3) in seeds
  assert not os.path.exists(tmp_path / 'batches' / 'batch-00001')
  with pytest.raises(ValueError, match='other settings'):
    records.BatchRecords(str(tmp_path / 'batches'), {'try': 2})


def test_a_record_that_does_not_match_is_computed_again(tmp_path, test_set,
                                                        capsys):
  replicas = _copies('relu', ['/cpu:0'])
  folder = tmp_path / 'batches'
  reference = _evaluate(replicas, test_set,
                        record=records.BatchRecords(str(folder), {'try': 1}))
  capsys.readouterr()
  # Another valid batch put in batch 0's place; batch 2 cut short; batch 3
  # made for another evaluation.
  shutil.copy(folder / 'batch-00001.npz', folder / 'batch-00000.npz')
  data = (folder / 'batch-00002.npz').read_bytes()
  (folder / 'batch-00002.npz').write_bytes(data[:len(data) // 2])
  other = records.BatchRecords(str(tmp_path / 'other'), {'try': 2})
  other.save(3, {'x': np.zeros(1)})
  shutil.copy(other.path(3), folder / 'batch-00003.npz')
  again = _evaluate(replicas, test_set,
                    record=records.BatchRecords(str(folder), {'try': 1}))
  _assert_same(reference, again)
  notes = capsys.readouterr().out
  assert 'batch-00000.npz holds batch 1, not batch 0' in notes
  assert 'batch-00002.npz cannot be read' in notes
  assert 'batch-00003.npz was computed for another evaluation' in notes
  assert notes.count('computing it again') == 3
  # Nothing deleted: the three files are kept aside.
  assert len(os.listdir(folder / records.SET_ASIDE_DIR)) == 3
  # Images other than the ones a batch was made from are caught too.
  images, labels = test_set
  changed = (images.copy(), labels)
  changed[0][0] = 255 - changed[0][0]
  _evaluate(replicas, changed,
            record=records.BatchRecords(str(folder), {'try': 1}))
  assert 'batch-00000.npz was computed from other test images' in (
      capsys.readouterr().out)


def test_records_refuse_sharing_without_a_folder(test_set):
  with pytest.raises(ValueError, match='record'):
    _evaluate(_copies('relu', ['/cpu:0']), test_set,
              shard=robustness.Shard(0, 2))


@pytest.mark.slow
def test_two_workers_give_the_table_of_one_device(tmp_path):
  config = config_lib.ExperimentConfig(
      mode='train', output_dir=str(tmp_path / 'one'),
      data=config_lib.DataConfig(dataset='synthetic', train_examples=128,
                                 eval_examples=40, batch_size=32,
                                 eval_batch_size=10),
      model=config_lib.ModelConfig(seed_cnn_filters=(4, 8), seed_cnn_units=16,
                                   activation='lwta'),
      train=config_lib.TrainConfig(epochs=1, learning_rate=0.05,
                                   strategy='one_device'),
      attack=ATTACKS)
  train_mode.run(config, run_folder.RunFolder(config.output_dir),
                 tf.distribute.OneDeviceStrategy('/cpu:0'))
  shutil.copytree(tmp_path / 'one', tmp_path / 'two')
  args = ['--mode=evaluate', '--dataset=synthetic', '--eval_examples=40',
          '--eval_batch_size=10', '--train_examples=128', '--batch_size=32',
          '--epochs=1', '--learning_rate=0.05', '--activation=lwta',
          '--seed_cnn_filters=4,8', '--seed_cnn_units=16',
          '--attacks=fgsm,pgd_linf', '--fgsm_eps=0.05', '--pgd_eps=0.05',
          '--pgd_alpha=0.02', '--pgd_steps=3', '--eot_samples=2',
          '--mc_samples=2', '--decision_repeats=2']
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  env.pop('TF_CONFIG', None)
  single = subprocess.run(
      [sys.executable, os.path.join(REPO, 'main.py'), *args,
       '--strategy=one_device', f'--output_dir={tmp_path / "one"}'],
      cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  workers = tf_config.local_workers(2)
  procs = []
  for index in range(2):
    cluster = json.dumps({'cluster': {'worker': workers},
                          'task': {'type': 'worker', 'index': index}})
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(REPO, 'main.py'), *args,
         '--strategy=multi_worker', f'--output_dir={tmp_path / "two"}'],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**env, 'TF_CONFIG': cluster}))
  try:
    outputs = [proc.communicate(timeout=600) for proc in procs]
  finally:
    for proc in procs:
      proc.kill()
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]

  def table(run):
    with open(tmp_path / run / 'robustness.json') as f:
      return _untimed(json.load(f)['rows'])

  assert table('one') == table('two')
  # Each worker computed its own half of the batches.
  folder = [p for p in (tmp_path / 'two' / records.EVALUATIONS_DIR).iterdir()]
  assert len(folder) == 1
  assert sorted(p.name for p in (folder[0] / 'batches').iterdir()) == [
      'batch-00000.npz', 'batch-00001.npz', 'batch-00002.npz',
      'batch-00003.npz', 'meta.json']
  assert 'Robustness on 40' in outputs[0][0]
  assert 'Robustness on' not in outputs[1][0]

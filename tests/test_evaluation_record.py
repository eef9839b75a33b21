"""An evaluation's record: kept by content, not by path; logged once."""

import dataclasses
import glob
import os
import shutil

from tensorboard.backend.event_processing import event_accumulator
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import run_folder
from tf_slwta.evaluation import records
from tf_slwta.modes import evaluate as evaluate_mode
from tf_slwta.modes import train as train_mode


def _scalar_points(summary_dir):
  """{tag: number of points} of the scalars under `summary_dir`."""
  points = {}
  for path in glob.glob(os.path.join(summary_dir, 'events.*')):
    events = event_accumulator.EventAccumulator(path)
    events.Reload()
    for tag in events.Tags()['tensors']:
      if tag.startswith('robustness/'):
        points[tag] = points.get(tag, 0) + len(events.Tensors(tag))
  return points


def test_a_moved_run_keeps_its_record_and_reading_it_back_logs_nothing(
    tmp_path, capsys):
  config = config_lib.ExperimentConfig(
      mode='train', output_dir=str(tmp_path / 'run'),
      evaluate_robustness=False,
      data=config_lib.DataConfig(dataset='synthetic', train_examples=64,
                                 eval_examples=20, batch_size=32,
                                 eval_batch_size=10),
      model=config_lib.ModelConfig(seed_cnn_filters=(4, 8), seed_cnn_units=16),
      train=config_lib.TrainConfig(epochs=1, strategy='one_device'),
      attack=config_lib.AttackConfig(attacks=('fgsm', 'apgd_ce'),
                                     fgsm_eps=0.05, aa_eps=0.03,
                                     apgd_steps=3))
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  train_mode.run(config, run_folder.RunFolder(config.output_dir), strategy)
  evaluate = dataclasses.replace(config, mode='evaluate')
  _, rows = evaluate_mode.run(evaluate, run_folder.RunFolder(
      evaluate.output_dir), strategy)
  summaries = os.path.join(evaluate.output_dir, 'summaries')
  # Every number is tagged with its threat model and image count.
  assert _scalar_points(summaries) == {
      'robustness/none/natural/20_images': 1,
      'robustness/linf_0.05/fgsm/20_images': 1,
      'robustness/linf_0.03/apgd_ce/20_images': 1,
      'robustness/linf_0.05+linf_0.03/combined/20_images': 1}
  capsys.readouterr()

  # Again: read back from the record, no attack runs, nothing logged twice.
  _, again = evaluate_mode.run(evaluate, run_folder.RunFolder(
      evaluate.output_dir), strategy)
  assert again == rows
  assert set(_scalar_points(summaries).values()) == {1}
  assert 'attack runs' not in capsys.readouterr().out

  # Moved (or copied) elsewhere, the run keeps its record.
  moved = str(tmp_path / 'elsewhere' / 'run')
  shutil.copytree(evaluate.output_dir, moved)
  shutil.rmtree(evaluate.output_dir)
  _, there = evaluate_mode.run(
      dataclasses.replace(evaluate, output_dir=moved),
      run_folder.RunFolder(moved), strategy)
  assert there == rows
  out = capsys.readouterr().out
  assert 'attack runs' not in out and 'computing it again' not in out
  assert len(os.listdir(os.path.join(moved, records.EVALUATIONS_DIR))) == 1

"""The distributed training loop: learning, replicas, seeds, schedules, NaN."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.modes import evaluate as evaluate_mode
from tf_slwta.training import loop
from tf_slwta.training import optimizer as optimizer_lib
from tf_slwta.training import state as state_lib
from tf_slwta.training import steps


def small_config(output_dir, *, epochs=2, train_examples=512, batch_size=32,
                 **train_overrides):
  """A seconds-long run: tiny seed CNN on synthetic data."""
  return config_lib.ExperimentConfig(
      output_dir=str(output_dir),
      data=config_lib.DataConfig(dataset='synthetic',
                                 train_examples=train_examples,
                                 eval_examples=256, batch_size=batch_size,
                                 eval_batch_size=128),
      model=config_lib.ModelConfig(seed_cnn_filters=(8, 16), seed_cnn_units=32),
      train=config_lib.TrainConfig(**{
          'epochs': epochs, 'learning_rate': 0.05, 'log_every_steps': 4,
          'strategy': 'one_device', **train_overrides}))


def read_metrics(output_dir):
  with open(os.path.join(output_dir, run_folder.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


ONE_DEVICE = lambda: tf.distribute.OneDeviceStrategy('/cpu:0')
TWO_REPLICAS = lambda: tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])


def test_loss_falls_and_model_learns(tmp_path):
  cfg = small_config(tmp_path, epochs=3, train_examples=1024)
  final = loop.train(cfg, ONE_DEVICE())
  metrics = read_metrics(tmp_path)
  assert [m['epoch'] for m in metrics] == [1, 2, 3]
  assert metrics[-1]['train/loss'] < 0.5 * metrics[0]['train/loss']
  assert final['test/accuracy'] > 0.8  # 10 classes: chance is 0.1.
  assert final == metrics[-1]
  # What a user is promised to find in output_dir.
  assert tf.train.latest_checkpoint(os.path.join(tmp_path, 'checkpoints'))
  assert tf.io.gfile.glob(os.path.join(tmp_path, 'summaries', 'events.*'))
  with open(os.path.join(tmp_path, run_folder.CONFIG_FILE)) as f:
    assert json.load(f) == json.loads(cfg.to_json())


def test_two_replicas_give_the_loss_of_one_device(tmp_path):
  one = loop.train(small_config(tmp_path / 'one'), ONE_DEVICE())
  two_strategy = TWO_REPLICAS()
  assert two_strategy.num_replicas_in_sync == 2
  two = loop.train(small_config(tmp_path / 'two'), two_strategy)
  for a, b in zip(read_metrics(tmp_path / 'one'), read_metrics(tmp_path / 'two')):
    for key in ('train/loss', 'train/accuracy', 'test/loss', 'test/accuracy'):
      assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), key
  assert one['test/loss'] == pytest.approx(two['test/loss'], rel=1e-4)


def test_same_seed_repeats_a_cpu_run(tmp_path):
  a = loop.train(small_config(tmp_path / 'a', seed=7), ONE_DEVICE())
  b = loop.train(small_config(tmp_path / 'b', seed=7), ONE_DEVICE())
  c = loop.train(small_config(tmp_path / 'c', seed=8), ONE_DEVICE())
  for key in ('train/loss', 'test/loss', 'test/accuracy'):
    assert a[key] == b[key], key
  assert a['train/loss'] != c['train/loss']


def test_finished_run_is_not_trained_again(tmp_path):
  cfg = small_config(tmp_path, epochs=1)
  first = loop.train(cfg, ONE_DEVICE())
  again = loop.train(cfg, ONE_DEVICE())
  assert again['step'] == first['step']
  assert again['test/loss'] == pytest.approx(first['test/loss'], rel=1e-6)
  assert len(read_metrics(tmp_path)) == 1
  # More epochs continue the same run from where it stopped.
  longer = loop.train(small_config(tmp_path, epochs=2), ONE_DEVICE())
  assert longer['epoch'] == 2 and longer['step'] == 2 * first['step']
  assert [m['epoch'] for m in read_metrics(tmp_path)] == [1, 2]


def test_other_settings_in_the_same_output_dir_are_refused(tmp_path):
  loop.train(small_config(tmp_path, epochs=1), ONE_DEVICE())
  with pytest.raises(run_folder.RunMismatch, match='model.seed_cnn_units'):
    other = small_config(tmp_path, epochs=1)
    other = config_lib.ExperimentConfig(
        output_dir=other.output_dir, data=other.data, train=other.train,
        model=config_lib.ModelConfig(seed_cnn_filters=(8, 16),
                                     seed_cnn_units=64))
    loop.train(other, ONE_DEVICE())


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  calls = tf.Variable(0)

  def poison_after_ten_steps(model, images, labels):
    del model, labels
    calls.assign_add(1)
    return tf.cond(calls > 10, lambda: images * np.nan, lambda: images)

  cfg = small_config(tmp_path, epochs=2, checkpoint_every_steps=4,
                     log_every_steps=2)
  with pytest.raises(loop.TrainingDiverged, match='--learning_rate') as err:
    loop.train(cfg, ONE_DEVICE(), perturb=poison_after_ten_steps)
  latest = tf.train.latest_checkpoint(os.path.join(tmp_path, 'checkpoints'))
  assert latest.endswith('ckpt-8')
  assert 'ckpt-8' in str(err.value)
  reader = tf.train.load_checkpoint(latest)
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if np.issubdtype(np.asarray(value).dtype, np.floating):
      assert np.all(np.isfinite(value)), name


def test_perturbation_seam_sees_each_training_batch(tmp_path):
  seen = tf.Variable(0.0)

  def count_images(model, images, labels):
    del model, labels
    seen.assign_add(tf.cast(tf.shape(images)[0], tf.float32))
    return tf.clip_by_value(images + 0.01, 0.0, 1.0)

  cfg = small_config(tmp_path, epochs=1)
  loop.train(cfg, ONE_DEVICE(), perturb=count_images)
  assert seen.numpy() == (512 // 32) * 32


def test_learning_rate_schedules():
  warm = config_lib.TrainConfig(epochs=10, learning_rate=0.1,
                                lr_warmup_epochs=2)
  schedule = optimizer_lib.learning_rate_schedule(warm, steps_per_epoch=10)
  assert float(schedule(0)) < 0.02
  assert float(schedule(20)) == pytest.approx(0.1, rel=1e-3)
  assert float(schedule(99)) < 0.001
  step = config_lib.TrainConfig(epochs=10, learning_rate=0.1,
                                lr_schedule='step', lr_decay_epochs=(3, 6),
                                lr_decay_ratio=0.5)
  schedule = optimizer_lib.learning_rate_schedule(step, steps_per_epoch=10)
  assert [float(schedule(s)) for s in (0, 29, 30, 60)] == pytest.approx(
      [0.1, 0.1, 0.05, 0.025])
  const = optimizer_lib.learning_rate_schedule(
      config_lib.TrainConfig(lr_schedule='constant', learning_rate=0.3), 5)
  assert float(const(10_000)) == pytest.approx(0.3)


def test_batch_must_split_over_replicas(tmp_path):
  cfg = small_config(tmp_path, batch_size=33)
  with pytest.raises(ValueError, match='--batch_size=33'):
    loop.train(cfg, TWO_REPLICAS())


def test_evaluate_checkpoint_matches_training_result(tmp_path):
  cfg = small_config(tmp_path, epochs=1)
  final = loop.train(cfg, ONE_DEVICE())
  result = evaluate_mode.evaluate_checkpoint(cfg, ONE_DEVICE())
  assert result['accuracy'] == pytest.approx(final['test/accuracy'])
  assert result['examples'] == 256
  with open(os.path.join(tmp_path, 'eval_results.json')) as f:
    assert json.load(f)['accuracy'] == result['accuracy']


def test_evaluate_without_checkpoint_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match='--mode=train'):
    evaluate_mode.evaluate_checkpoint(small_config(tmp_path), ONE_DEVICE())


def test_config_round_trips_through_its_json(tmp_path):
  cfg = small_config(tmp_path, lr_decay_epochs=(1,), lr_schedule='step')
  assert config_lib.ExperimentConfig.from_dict(json.loads(cfg.to_json())) == cfg


def test_uneven_evaluation_split_counts_every_example_once(tmp_path):
  cfg = small_config(tmp_path, epochs=1)
  loop.train(cfg, ONE_DEVICE())
  images, labels = data_lib.make_synthetic('test', 70)
  results = []
  for strategy in (ONE_DEVICE(), TWO_REPLICAS()):
    model = state_lib.restore_model(cfg, strategy)
    results.append(steps.evaluate(strategy, steps.make_eval_step(model, strategy),
                                 images, labels, global_batch_size=32))
  assert results[0]['examples'] == results[1]['examples'] == 70
  assert results[0]['accuracy'] == pytest.approx(results[1]['accuracy'])
  assert results[0]['loss'] == pytest.approx(results[1]['loss'], rel=1e-5)


def test_runs_from_before_a_new_setting_still_resume(tmp_path):
  cfg = small_config(tmp_path, epochs=1)
  loop.train(cfg, ONE_DEVICE())
  path = os.path.join(tmp_path, run_folder.CONFIG_FILE)
  with open(path) as f:
    saved = json.load(f)
  del saved['model']['pni'], saved['train']['mixture']  # An older version.
  with open(path, 'w') as f:
    json.dump(saved, f)
  assert loop.train(small_config(tmp_path, epochs=2), ONE_DEVICE())['epoch'] == 2


def test_kl_is_recorded_and_checkpoints_without_it_resume(tmp_path, capsys):
  cfg = small_config(tmp_path, epochs=1)
  loop.train(cfg, ONE_DEVICE())
  assert read_metrics(tmp_path)[0]['train/kl'] == 0.0  # No stochastic layer.
  # Rewrite the checkpoint as runs saved it before the KL was recorded.
  strategy = ONE_DEVICE()
  state = state_lib.build_training_state(cfg, strategy, steps_per_epoch=16)
  ckpt_dir = os.path.join(tmp_path, 'checkpoints')
  tf.io.gfile.rmtree(ckpt_dir)
  old = tf.train.Checkpoint(model=state.model, optimizer=state.optimizer,
                            epoch_totals=state.totals)
  tf.train.CheckpointManager(old, ckpt_dir, max_to_keep=1,
                             checkpoint_name='ckpt').save(checkpoint_number=16)
  assert not any(n.startswith('epoch_kl') for n, _ in tf.train.list_variables(
      tf.train.latest_checkpoint(ckpt_dir)))
  resumed = loop.train(small_config(tmp_path, epochs=2), ONE_DEVICE())
  assert resumed['epoch'] == 2
  assert [m['epoch'] for m in read_metrics(tmp_path)] == [1, 2]
  # Mid-epoch too: the KL is counted from the resumed step on.
  state = state_lib.build_training_state(cfg, strategy, steps_per_epoch=16)
  state.optimizer.iterations.assign(40)  # Step 8 of epoch 3.
  tf.io.gfile.rmtree(ckpt_dir)
  old = tf.train.Checkpoint(model=state.model, optimizer=state.optimizer,
                            epoch_totals=state.totals)
  tf.train.CheckpointManager(old, ckpt_dir, max_to_keep=1,
                             checkpoint_name='ckpt').save(checkpoint_number=40)
  capsys.readouterr()
  resumed = loop.train(small_config(tmp_path, epochs=3), ONE_DEVICE())
  progress = capsys.readouterr().out  # Progress from step 8 on.
  assert 'epoch 3/3: ' in progress and '12/16 steps' in progress
  assert '4/16 steps' not in progress and 'epoch 1/3' not in progress
  assert (resumed['epoch'], resumed['step']) == (3, 48)
  assert resumed['train/kl'] == 0.0 and np.isfinite(resumed['train/loss'])
  assert read_metrics(tmp_path)[-1]['epoch'] == 3


def test_kl_of_a_stochastic_model_is_recorded(tmp_path):
  cfg = small_config(tmp_path, epochs=1)
  cfg = config_lib.ExperimentConfig(
      output_dir=cfg.output_dir, data=cfg.data,
      model=config_lib.ModelConfig(seed_cnn_filters=(8, 16), seed_cnn_units=32,
                                   activation='lwta', ibp=True),
      train=dataclasses.replace(cfg.train, lwta_kl_weight=1 / 512,
                                ibp_kl_weight=1.0))
  record = loop.train(cfg, ONE_DEVICE())
  assert record['train/kl'] > 0
  # The global KL weighted by 1 / (training examples) in the objective, the
  # winner KL here too, with no annealing.
  assert record['train/kl_term'] == pytest.approx(record['train/kl'] / 512,
                                                  rel=1e-4)
  # Replicas report the KL of the same model, not a sum over them. Replicas
  # draw their own winners, so compare a model without draws (hard winners,
  # no IBP): one device and two replicas then train the same weights.
  # (Reduced on one device: a third collective-ops strategy in one test
  # process can collide with the earlier ones' instance keys.)
  hard = dataclasses.replace(cfg, model=dataclasses.replace(
      cfg.model, ibp=False, lwta_deterministic=True))
  one = loop.train(dataclasses.replace(hard, output_dir=str(tmp_path / 'one')),
                   ONE_DEVICE())
  two = loop.train(dataclasses.replace(hard, output_dir=str(tmp_path / 'two')),
                   tf.distribute.MirroredStrategy(
                       ['/cpu:0', '/cpu:1'],
                       cross_device_ops=tf.distribute.ReductionToOneDevice()))
  assert one['train/kl'] > 0
  # (BatchNorm's per-replica statistics move the two runs apart by ~0.1%;
  # a sum over replicas would double it.)
  assert two['train/kl'] == pytest.approx(one['train/kl'], rel=1e-2)


def test_each_epoch_prints_a_line_a_person_reads(tmp_path, capsys):
  """Loss, accuracy, images, KL of stochastic layers, time; JSON in the file."""
  for activation in ('relu', 'lwta'):
    cfg = small_config(tmp_path / activation, epochs=2, train_examples=128)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(
        cfg.model, activation=activation))
    capsys.readouterr()
    loop.train(cfg, ONE_DEVICE())
    lines = [l for l in capsys.readouterr().out.splitlines()
             if l.startswith('Epoch 2/2:')]
    record = read_metrics(tmp_path / activation)[-1]
    assert lines == [loop.epoch_line(record, 2, activation == 'lwta')]
    line = lines[0]
    assert line.startswith(
        f'Epoch 2/2: train loss {record["train/loss"]:.4f}, accuracy '
        f'{100 * record["train/accuracy"]:.2f}%; test loss '
        f'{record["test/loss"]:.4f}, accuracy '
        f'{100 * record["test/accuracy"]:.2f}% on 256 images')
    assert line.endswith(' images/s') and ' s, ' in line and '{' not in line
    assert ('; KL ' in line) == (activation == 'lwta')
  record = {**record, 'train/epoch_seconds': 3725.2, 'train/kl': 1234.5678,
            'train/kl_term': 0.00241}
  assert loop.epoch_line(record, 10, True).endswith(
      '; KL 1235 (0.00241 in the loss); 1:02:05, '
      f'{record["train/images_per_sec"]:.0f} images/s')

"""The custom training loop under a tf.distribute strategy.

Shape of a run (after google/uncertainty-baselines):
  * the strategy is made once by the caller; model, optimizer and metrics
    are built inside `strategy.scope()` (`state.build_training_state`);
  * every step runs the compiled `steps.make_train_step` on the next
    distributed batch;
  * checkpoints are saved at the end of each epoch and optionally every N
    steps. The data pipeline is a function of (seed, epoch, step), so a
    resumed run continues with exactly the batches it would have seen.
"""

import json
import os
import sys
import time
from typing import Dict, Optional, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.training import distribute
from tf_slwta.training import state as state_lib
from tf_slwta.training import steps as steps_lib

Arrays = Tuple[np.ndarray, np.ndarray]


class TrainingDiverged(FloatingPointError):
  """The loss or the weights stopped being finite."""


def _check_finite(state: state_lib.TrainingState, where: str) -> None:
  totals = state.totals.numpy()
  finite = np.all(np.isfinite(totals)) and all(
      bool(tf.reduce_all(tf.math.is_finite(v)))
      for v in state.model.trainable_variables)
  if not finite:
    raise TrainingDiverged(
        f'Training diverged {where}: the loss or the weights are no longer '
        f'finite (epoch loss sum {totals[0]}). Nothing was saved after the '
        f'last good checkpoint ({state.manager.latest_checkpoint or "none"}). '
        f'Lower --learning_rate or check the data, then run again.')


class _Progress:
  """Per-epoch progress: Keras' progress bar on a terminal, plain lines in logs."""

  def __init__(self, epoch: int, epochs: int, steps: int, enabled: bool):
    self.epoch, self.steps, self.enabled = epoch + 1, steps, enabled
    self.bar = None
    if enabled and sys.stdout.isatty():
      self.bar = keras.utils.Progbar(
          steps, stateful_metrics=['loss', 'accuracy', 'images/s'])
    if enabled:
      print(f'Epoch {epoch + 1}/{epochs}', flush=True)

  def update(self, step: int, loss: float, accuracy: float,
             images_per_sec: float) -> None:
    if self.bar is not None:
      self.bar.update(step, [('loss', loss), ('accuracy', accuracy),
                             ('images/s', images_per_sec)])
    elif self.enabled:
      print(f'epoch {self.epoch} step {step}/{self.steps} - loss {loss:.4f} - '
            f'accuracy {accuracy:.4f} - images/s {images_per_sec:.0f}',
            flush=True)


def _mean_kl(state: state_lib.TrainingState) -> Dict[str, float]:
  """The epoch's mean KL per step so far.

  Returns:
    {'train/kl': the unscaled sum of `model.losses` (KL of the LWTA winners
    per example plus the IBP sticks and utilities), 'train/kl_term': the same
    as weighted in the objective}; both >= 0, and 0 for models without
    stochastic layers.
  """
  kl, term, steps = state.kl_totals.numpy()
  steps = max(steps, 1.0)
  return {'train/kl': kl / steps, 'train/kl_term': term / steps}


def train(config: config_lib.ExperimentConfig, strategy: tf.distribute.Strategy,
          *, perturb: steps_lib.PerturbFn = steps_lib.identity_perturbation,
          train_arrays: Optional[Arrays] = None,
          test_arrays: Optional[Arrays] = None) -> Dict[str, float]:
  """Trains (or resumes) the configured model and evaluates it every epoch.

  Writes under `config.output_dir`: config.json, checkpoints/, summaries/
  (TensorBoard), metrics.jsonl (one line per epoch) and results.json.

  Args:
    config: the run's settings.
    strategy: from `distribute.make_strategy`.
    perturb: the per-batch perturbation seam (see `steps`).
    train_arrays, test_arrays: (uint8 images `[N, H, W, C]`, int64 labels
      `[N]`); loaded from `config.data` when None.

  Returns:
    The last epoch's metrics: 'epoch', 'step', 'train/loss',
    'train/accuracy', 'test/loss', 'test/accuracy' (accuracies in [0, 1]),
    'train/kl' and 'train/kl_term' (see `_mean_kl`).
  """
  data_cfg, train_cfg = config.data, config.train
  folder = run_folder.RunFolder(config.output_dir)
  replicas = strategy.num_replicas_in_sync
  for name, batch in (('batch_size', data_cfg.batch_size),
                      ('eval_batch_size', data_cfg.eval_batch_size)):
    if batch % replicas:
      raise ValueError(f'--{name}={batch} does not split evenly over '
                       f'{replicas} replicas; use a multiple of {replicas}.')
  state_lib.check_run_identity(config)
  train_images, train_labels = train_arrays or data_lib.load_arrays(data_cfg, 'train')
  test_images, test_labels = test_arrays or data_lib.load_arrays(data_cfg, 'test')
  steps_per_epoch = data_lib.steps_per_epoch(len(train_images), data_cfg.batch_size)

  chief = distribute.is_chief(strategy)
  if chief:
    folder.write_config(config)
  state = state_lib.build_training_state(config, strategy, steps_per_epoch)
  train_step = steps_lib.make_train_step(
      state, strategy, global_batch_size=data_cfg.batch_size,
      label_smoothing=train_cfg.label_smoothing, perturb=perturb,
      clean_loss_weight=train_cfg.clean_loss_weight,
      num_train_examples=len(train_images),
      kl_anneal_steps=int(train_cfg.kl_anneal_epochs * steps_per_epoch))
  # A perturbation may report its own numbers (e.g. the mixture's branch
  # shares) through a `summaries() -> {name: value}` method.
  perturb_summaries = getattr(perturb, 'summaries', dict)
  eval_step = steps_lib.make_eval_step(state.model, strategy)
  writer = (tf.summary.create_file_writer(folder.summary_dir) if chief
            else tf.summary.create_noop_writer())

  start_epoch, start_step = divmod(state.global_step, steps_per_epoch)
  if start_epoch >= train_cfg.epochs:
    logging.info('Training already complete (%d epochs) in %s.',
                 start_epoch, config.output_dir)
  record = {}
  for epoch in range(start_epoch, train_cfg.epochs):
    first = start_step if epoch == start_epoch else 0
    if first == 0:
      state.totals.assign(tf.zeros_like(state.totals))
      state.kl_totals.assign(tf.zeros_like(state.kl_totals))
    iterator = iter(strategy.distribute_datasets_from_function(
        data_lib.train_dataset_fn(
            train_images, train_labels, global_batch_size=data_cfg.batch_size,
            epoch=epoch, seed=train_cfg.seed, augment=data_cfg.use_augmentation,
            start_step=first)))
    progress = _Progress(epoch, train_cfg.epochs, steps_per_epoch,
                         enabled=chief)
    epoch_start = interval_start = time.perf_counter()
    interval_images = epoch_images = 0
    for step in range(first, steps_per_epoch):
      objective, stats = train_step(iterator)
      state.totals.assign_add(tf.cast(
          tf.concat([[objective, 1.0], stats[:2]], axis=0), tf.float64))
      state.kl_totals.assign_add(tf.cast(
          tf.concat([stats[2:], [1.0]], axis=0), tf.float64))
      interval_images += data_cfg.batch_size
      global_step = epoch * steps_per_epoch + step + 1
      if (step + 1) % train_cfg.log_every_steps == 0 or step + 1 == steps_per_epoch:
        _check_finite(state, f'at step {global_step} (epoch {epoch + 1})')
        totals = state.totals.numpy()
        now = time.perf_counter()
        images_per_sec = interval_images / max(now - interval_start, 1e-9)
        epoch_images += interval_images
        interval_images, interval_start = 0, now
        loss, accuracy = totals[0] / totals[1], totals[2] / totals[3]
        learning_rate = float(state.optimizer.learning_rate)
        progress.update(step + 1, loss, accuracy, images_per_sec)
        with writer.as_default(step=global_step):
          tf.summary.scalar('train/loss', loss)
          tf.summary.scalar('train/accuracy', accuracy)
          tf.summary.scalar('train/learning_rate', learning_rate)
          tf.summary.scalar('train/kl', _mean_kl(state)['train/kl'])
          tf.summary.scalar('train/images_per_sec', images_per_sec)
          for key, value in perturb_summaries().items():
            tf.summary.scalar(key, value)
      if (train_cfg.checkpoint_every_steps and step + 1 < steps_per_epoch and
          global_step % train_cfg.checkpoint_every_steps == 0):
        _check_finite(state, f'at step {global_step} (epoch {epoch + 1})')
        state.manager.save(checkpoint_number=global_step)

    train_seconds = time.perf_counter() - epoch_start
    test = steps_lib.evaluate(strategy, eval_step, test_images, test_labels,
                              data_cfg.eval_batch_size)
    totals = state.totals.numpy()
    record = {
        'epoch': epoch + 1,
        'step': (epoch + 1) * steps_per_epoch,
        'train/loss': totals[0] / totals[1],
        'train/accuracy': totals[2] / totals[3],
        'train/images_per_sec': epoch_images / max(train_seconds, 1e-9),
        'train/learning_rate': float(state.optimizer.learning_rate),
        'train/epoch_seconds': train_seconds,
        'test/loss': test['loss'],
        'test/accuracy': test['accuracy'],
        'test/examples': test['examples'],
        **_mean_kl(state),
        **perturb_summaries(),
    }
    with writer.as_default(step=record['step']):
      for key in ('test/loss', 'test/accuracy', 'train/epoch_seconds'):
        tf.summary.scalar(key, record[key])
    writer.flush()
    if chief:
      folder.append_metrics(record)
      print(json.dumps(record, sort_keys=True), flush=True)
    else:
      logging.info('Worker %d finished epoch %d: %s',
                   distribute.task_id(strategy), epoch + 1,
                   json.dumps(record, sort_keys=True))
    _check_finite(state, f'at the end of epoch {epoch + 1}')
    state.manager.save(checkpoint_number=record['step'])

  if not record:  # Nothing left to train: report the finished model.
    test = steps_lib.evaluate(strategy, eval_step, test_images, test_labels,
                              data_cfg.eval_batch_size)
    record = {'epoch': start_epoch, 'step': state.global_step,
              'test/loss': test['loss'], 'test/accuracy': test['accuracy'],
              'test/examples': test['examples']}
  if chief:
    folder.write_json(run_folder.RESULTS_FILE, record)
  else:
    tf.io.gfile.rmtree(os.path.dirname(state.manager.directory))
  return record

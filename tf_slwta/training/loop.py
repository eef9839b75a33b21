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

import dataclasses
import datetime
import errno
import os
import time
from typing import Callable, Dict, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import progress as progress_lib
from tf_slwta import run_folder
from tf_slwta.layers import layout
from tf_slwta.training import checkpoints
from tf_slwta.training import distribute
from tf_slwta.training import interrupts
from tf_slwta.training import state as state_lib
from tf_slwta.training import steps as steps_lib

Arrays = Tuple[np.ndarray, np.ndarray]


class TrainingDiverged(FloatingPointError):
  """The loss or the weights stopped being finite."""


class OutOfSpace(Exception):
  """A checkpoint could not be written for lack of space (or quota)."""


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
  """Per-epoch progress (`tf_slwta.progress`): steps, loss, accuracy, speed."""

  def __init__(self, epoch: int, epochs: int, steps: int, first: int,
               enabled: bool):
    self.done = first
    self.bar = progress_lib.Progress(f'epoch {epoch + 1}/{epochs}', steps,
                                     unit='step', enabled=enabled, done=first)

  def update(self, step: int, loss: float, accuracy: float,
             images_per_sec: float) -> None:
    self.bar.advance(step - self.done, info=(
        f'loss {loss:.4f}, accuracy {accuracy:.4f}, '
        f'{images_per_sec:,.0f} images/s'))
    self.done = step

  def close(self) -> None:
    self.bar.close()


def epoch_line(record: Dict[str, float], epochs: int, with_kl: bool) -> str:
  """One line a person reads for an epoch's record (metrics.jsonl keeps all).

  Args:
    record: the epoch's metrics ('epoch', 'train/loss', 'train/accuracy' and
      'test/accuracy' in [0, 1], 'test/loss', 'test/examples',
      'train/kl', 'train/kl_term', 'train/epoch_seconds',
      'train/images_per_sec').
    epochs: the epochs the run trains.
    with_kl: show the KL (models with stochastic LWTA or IBP layers).

  Returns:
    e.g. 'Epoch 2/3: train loss 2.2707, accuracy 22.07%; test loss 2.2806,
    accuracy 17.97% on 256 images; 1.1 s, 4892 images/s'.
  """
  seconds = record['train/epoch_seconds']
  took = (f'{seconds:.1f} s' if seconds < 60 else
          str(datetime.timedelta(seconds=round(seconds))))
  kl = (f'; KL {record["train/kl"]:.4g} ({record["train/kl_term"]:.4g} in '
        f'the loss)' if with_kl else '')
  return (f'Epoch {record["epoch"]}/{epochs}: train loss '
          f'{record["train/loss"]:.4f}, accuracy '
          f'{100 * record["train/accuracy"]:.2f}%; test loss '
          f'{record["test/loss"]:.4f}, accuracy '
          f'{100 * record["test/accuracy"]:.2f}% on '
          f'{record["test/examples"]} images{kl}; {took}, '
          f'{record["train/images_per_sec"]:.0f} images/s')


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


def _save(state: state_lib.TrainingState, step: int) -> str:
  """Saves checkpoint `ckpt-<step>`; on a full disk keeps the previous one.

  Raises:
    OutOfSpace: the disk (or quota) is full; the message names the folder
      and the checkpoint the run would resume from.
  """
  try:
    return state.manager.save(checkpoint_number=step)
  except (tf.errors.OpError, OSError) as e:
    text = getattr(e, 'message', None) or str(e)
    full = (isinstance(e, (tf.errors.ResourceExhaustedError, OutOfSpace)) or
            getattr(e, 'errno', None) in (errno.ENOSPC, errno.EDQUOT) or
            'No space left' in text or 'quota' in text.lower())
    if not full:
      raise
    directory = state.manager.directory
    for name in tf.io.gfile.listdir(directory):  # The part written: free it.
      if name.startswith((f'ckpt-{step}.', f'ckpt-{step}_temp')):
        path = os.path.join(directory, name)
        (tf.io.gfile.rmtree if tf.io.gfile.isdir(path) else
         tf.io.gfile.remove)(path)
    raise OutOfSpace(
        f'No space left on the device of {directory} while '
        f'saving checkpoint ckpt-{step}; the previous checkpoint '
        f'{state.manager.latest_checkpoint or "(none)"} is intact. Free some '
        f'space (df -h {directory}) and run the same command to continue.'
    ) from e


@dataclasses.dataclass
class _Run:
  """What the epochs of one `train` call share."""
  config: config_lib.ExperimentConfig
  strategy: tf.distribute.Strategy
  state: state_lib.TrainingState
  folder: run_folder.RunFolder
  train_step: Callable
  eval_step: Callable
  summaries: Callable[[], Dict[str, float]]
  writer: object
  steps_per_epoch: int
  chief: bool
  train_arrays: Arrays
  test_arrays: Arrays

  def test(self) -> Dict[str, float]:
    return steps_lib.evaluate(self.strategy, self.eval_step,
                              *self.test_arrays,
                              self.config.data.eval_batch_size)


def _stop(run: _Run, signum: int, epoch: int) -> None:
  """Saves the state at the current step and raises `Interrupted`."""
  step = run.state.global_step
  path = run.state.manager.latest_checkpoint
  if not path or not path.endswith(f'-{step}'):
    path = _save(run.state, step)
  raise interrupts.Interrupted(
      signum, f'Stopped by {interrupts.signal_name(signum)} at step {step} '
      f'(epoch {epoch + 1} of {run.config.train.epochs}); saved {path}. Run '
      f'the same command to continue from there.')


def _epoch(run: _Run, epoch: int, first: int, pending) -> Dict[str, float]:
  """Trains one epoch from step `first`, evaluates, checkpoints; its record."""
  cfg, state, steps = run.config, run.state, run.steps_per_epoch
  if first == 0:
    state.totals.assign(tf.zeros_like(state.totals))
    state.kl_totals.assign(tf.zeros_like(state.kl_totals))
  iterator = iter(run.strategy.distribute_datasets_from_function(
      data_lib.train_dataset_fn(
          *run.train_arrays, global_batch_size=cfg.data.batch_size,
          epoch=epoch, seed=cfg.train.seed,
          augment=cfg.data.use_augmentation, start_step=first)))
  progress = _Progress(epoch, cfg.train.epochs, steps, first,
                       enabled=run.chief)
  epoch_start = interval_start = time.perf_counter()
  interval_images = epoch_images = 0
  try:
    for step in range(first, steps):
      objective, stats = run.train_step(iterator)
      state.totals.assign_add(tf.cast(
          tf.concat([[objective, 1.0], stats[:2]], axis=0), tf.float64))
      state.kl_totals.assign_add(tf.cast(
          tf.concat([stats[2:], [1.0]], axis=0), tf.float64))
      interval_images += cfg.data.batch_size
      global_step = epoch * steps + step + 1
      where = f'at step {global_step} (epoch {epoch + 1})'
      if (step + 1) % cfg.train.log_every_steps == 0 or step + 1 == steps:
        _check_finite(state, where)
        totals = state.totals.numpy()
        now = time.perf_counter()
        images_per_sec = interval_images / max(now - interval_start, 1e-9)
        epoch_images += interval_images
        interval_images, interval_start = 0, now
        loss, accuracy = totals[0] / totals[1], totals[2] / totals[3]
        progress.update(step + 1, loss, accuracy, images_per_sec)
        with run.writer.as_default(step=global_step):
          tf.summary.scalar('train/loss', loss)
          tf.summary.scalar('train/accuracy', accuracy)
          tf.summary.scalar('train/learning_rate',
                            float(state.optimizer.learning_rate))
          tf.summary.scalar('train/kl', _mean_kl(state)['train/kl'])
          tf.summary.scalar('train/images_per_sec', images_per_sec)
          for key, value in run.summaries().items():
            tf.summary.scalar(key, value)
      if step + 1 < steps and (pending() is not None or (
          cfg.train.checkpoint_every_steps and
          global_step % cfg.train.checkpoint_every_steps == 0)):
        _check_finite(state, where)
        _save(state, global_step)
        if pending() is not None:
          _stop(run, pending(), epoch)
  finally:
    progress.close()
  train_seconds = time.perf_counter() - epoch_start
  test = run.test()
  totals = state.totals.numpy()
  record = {
      'epoch': epoch + 1,
      'step': (epoch + 1) * steps,
      'train/loss': totals[0] / totals[1],
      'train/accuracy': totals[2] / totals[3],
      'train/images_per_sec': epoch_images / max(train_seconds, 1e-9),
      'train/learning_rate': float(state.optimizer.learning_rate),
      'train/epoch_seconds': train_seconds,
      'test/loss': test['loss'],
      'test/accuracy': test['accuracy'],
      'test/examples': test['examples'],
      **_mean_kl(state),
      **run.summaries(),
  }
  with run.writer.as_default(step=record['step']):
    for key in ('test/loss', 'test/accuracy', 'train/epoch_seconds'):
      tf.summary.scalar(key, record[key])
  run.writer.flush()
  line = epoch_line(record, cfg.train.epochs,
                    with_kl=layout.uses_blocks(state.model))
  if run.chief:
    run.folder.append_metrics(record)
    print(line, flush=True)
  else:
    print(f'Worker {distribute.task_id(run.strategy)}: {line}', flush=True)
  _check_finite(state, f'at the end of epoch {epoch + 1}')
  _save(state, record['step'])
  return record


def _check_epochs(config: config_lib.ExperimentConfig, steps_per_epoch: int,
                  step: Optional[int] = None) -> None:
  """Refuses --epochs under what the run has trained.

  Args:
    config: the run's settings.
    steps_per_epoch: optimizer steps per epoch.
    step: the restored global step; None reads the newest checkpoint's
      number, so the refusal comes before anything is restored.
  """
  if step is None:
    found = checkpoints.candidates(run_folder.checkpoint_dir(config.output_dir))
    step = found[0][0] if found else 0
  epochs, within = divmod(step, steps_per_epoch)
  if step > config.train.epochs * steps_per_epoch:
    done = f'{epochs} epochs' + (f' and {within} steps' if within else '')
    raise run_folder.RunMismatch(
        f'{config.output_dir} has trained {done} (step {step}); '
        f'--epochs={config.train.epochs} asks for fewer. Pass '
        f'--epochs={epochs + bool(within)} or more to continue it, '
        f'--mode=evaluate to score it, or a new --output_dir.')


def train(config: config_lib.ExperimentConfig, strategy: tf.distribute.Strategy,
          *, perturb: steps_lib.PerturbFn = steps_lib.identity_perturbation,
          train_arrays: Optional[Arrays] = None,
          test_arrays: Optional[Arrays] = None) -> Dict[str, float]:
  """Trains (or resumes) the configured model and evaluates it every epoch.

  Writes under `config.output_dir`: config.json, checkpoints/, summaries/
  (TensorBoard), metrics.jsonl (one line per epoch) and results.json, each
  file replaced atomically. A resumed run continues from the newest intact
  checkpoint with the batches and random draws an uninterrupted run would
  have had. SIGINT or SIGTERM saves a checkpoint at the current step and
  raises `interrupts.Interrupted`.

  Args:
    config: the run's settings.
    strategy: from `distribute.make_strategy`.
    perturb: the per-batch perturbation seam (see `steps`); one with a
      `checkpoint_items() -> {name: trackable}` method gets those saved in
      the checkpoints, one with `summaries() -> {name: float}` gets them
      logged.
    train_arrays, test_arrays: (uint8 images `[N, H, W, C]`, int64 labels
      `[N]`); loaded from `config.data` when None.

  Returns:
    The last epoch's metrics: 'epoch', 'step', 'train/loss',
    'train/accuracy', 'test/loss', 'test/accuracy' (accuracies in [0, 1]),
    'train/kl' and 'train/kl_term' (see `_mean_kl`).

  Raises:
    run_folder.RunMismatch: the folder holds a run made with other
      settings, or one already trained past `config.train.epochs`.
    TrainingDiverged: the loss or weights stopped being finite.
    OutOfSpace: a checkpoint could not be written.
    interrupts.Interrupted: stopped by a signal, state saved.
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
  chief = distribute.is_chief(strategy)
  if chief:
    note = folder.repair_metrics()
    if note:
      print(note, flush=True)
  train_arrays = train_arrays or data_lib.load_arrays(data_cfg, 'train')
  test_arrays = test_arrays or data_lib.load_arrays(data_cfg, 'test')
  steps_per_epoch = data_lib.steps_per_epoch(len(train_arrays[0]),
                                             data_cfg.batch_size)
  _check_epochs(config, steps_per_epoch)
  state = state_lib.build_training_state(
      config, strategy, steps_per_epoch,
      extra=getattr(perturb, 'checkpoint_items', dict)())
  _check_epochs(config, steps_per_epoch, state.global_step)
  start_epoch, start_step = divmod(state.global_step, steps_per_epoch)
  if chief:
    folder.write_config(config)  # Only once the run is known to go ahead.
  run = _Run(
      config=config, strategy=strategy, state=state, folder=folder,
      train_step=steps_lib.make_train_step(
          state, strategy, global_batch_size=data_cfg.batch_size,
          label_smoothing=train_cfg.label_smoothing, perturb=perturb,
          clean_loss_weight=train_cfg.clean_loss_weight,
          num_train_examples=len(train_arrays[0]),
          kl_anneal_steps=int(train_cfg.kl_anneal_epochs * steps_per_epoch),
          lwta_kl_weight=train_cfg.lwta_kl_weight,
          ibp_kl_weight=train_cfg.ibp_kl_weight),
      eval_step=steps_lib.make_eval_step(state.model, strategy),
      summaries=getattr(perturb, 'summaries', dict),
      writer=(tf.summary.create_file_writer(folder.summary_dir) if chief
              else tf.summary.create_noop_writer()),
      steps_per_epoch=steps_per_epoch, chief=chief,
      train_arrays=train_arrays, test_arrays=test_arrays)

  if start_epoch >= train_cfg.epochs:
    logging.info('Training already complete (%d epochs) in %s.',
                 start_epoch, config.output_dir)
  record = {}
  with interrupts.deferred() as pending:
    for epoch in range(start_epoch, train_cfg.epochs):
      record = _epoch(run, epoch, start_step if epoch == start_epoch else 0,
                      pending)
      if pending() is not None and epoch + 1 < train_cfg.epochs:
        _stop(run, pending(), epoch)

  if not record:  # Nothing left to train: report the finished model.
    test = run.test()
    # Keep every field of the final epoch's results, with the fresh scores.
    record = {**(folder.read_results() or {}), 'epoch': start_epoch,
              'step': state.global_step, 'test/loss': test['loss'],
              'test/accuracy': test['accuracy'],
              'test/examples': test['examples']}
  if chief:
    folder.write_json(run_folder.RESULTS_FILE, record)
  else:
    tf.io.gfile.rmtree(os.path.dirname(state.manager.directory))
  return record

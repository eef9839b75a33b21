"""The custom training loop under a tf.distribute strategy.

Shape of a run (after google/uncertainty-baselines):
  * the strategy is made once by the caller; model, optimizer and metrics
    are built inside `strategy.scope()`;
  * `train_step` is a `tf.function` that takes a distributed iterator, runs
    one step on every replica with `strategy.run`, and returns sums reduced
    over replicas;
  * a `tf.train.CheckpointManager` under `<output_dir>/checkpoints` saves the
    model, the optimizer (its `iterations` is the global step) and the
    running totals of the epoch, at the end of each epoch and optionally
    every N steps. The data pipeline is a function of (seed, epoch, step), so
    a resumed run continues with exactly the batches it would have seen.

The seam for defenses is `perturb(model, images, labels) -> images`: it is
called on every replica's training batch inside the compiled step, before
the forward pass, and its output is treated as a constant (no gradient flows
through it). The default leaves the batch unchanged.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Callable, Dict, Optional, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta.layers import layout
from tf_slwta.layers import noise
from tf_slwta.training import distribute
from tf_slwta.training import losses
from tf_slwta.training import variational

PerturbFn = Callable[[keras.Model, tf.Tensor, tf.Tensor], tf.Tensor]
Arrays = Tuple[np.ndarray, np.ndarray]

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
RESULTS_FILE = 'results.json'
# Running sums of the epoch kept in the checkpoint: objective summed over
# steps, steps, correct predictions, examples.
_TOTALS = ('objective', 'steps', 'correct', 'examples')
# The KL of the stochastic layers, summed over the epoch's steps: unscaled
# (sum of model.losses), as weighted in the objective, and the steps
# counted. A variable of its own, so checkpoints from before it still load.
_KL_TOTALS = ('kl', 'kl_term', 'steps')


def identity_perturbation(model: keras.Model, images: tf.Tensor,
                          labels: tf.Tensor) -> tf.Tensor:
  """The default perturbation seam: train on the clean batch.

  Args:
    model: the model being trained (unused here; attacks need it).
    images: float32 `[b, H, W, C]` in [0, 1], one replica's batch.
    labels: int64 `[b]`.

  Returns:
    `images`, unchanged.
  """
  del model, labels
  return images


class TrainingDiverged(FloatingPointError):
  """The loss or the weights stopped being finite."""


class RunMismatch(ValueError):
  """`output_dir` holds a run made with other settings."""


def checkpoint_dir(output_dir: str) -> str:
  """Where a run's checkpoints live."""
  return os.path.join(output_dir, 'checkpoints')


def learning_rate_schedule(train: config_lib.TrainConfig, steps_per_epoch: int):
  """The learning rate as a function of the global step.

  Args:
    train: schedule settings ('constant', 'cosine' to 0 over all epochs, or
      'step' decays by `lr_decay_ratio` at `lr_decay_epochs`), with optional
      linear warm-up from 0 over `lr_warmup_epochs`.
    steps_per_epoch: optimizer steps in one epoch, >= 1.

  Returns:
    A float or a `keras.optimizers.schedules.LearningRateSchedule`.
  """
  total = train.epochs * steps_per_epoch
  warmup = int(round(train.lr_warmup_epochs * steps_per_epoch))
  schedules = keras.optimizers.schedules
  if train.lr_schedule == 'cosine':
    if warmup:
      return schedules.CosineDecay(0.0, max(total - warmup, 1),
                                   warmup_target=train.learning_rate,
                                   warmup_steps=warmup)
    return schedules.CosineDecay(train.learning_rate, total)
  if train.lr_schedule == 'step' and train.lr_decay_epochs:
    base = schedules.PiecewiseConstantDecay(
        [e * steps_per_epoch - 1 for e in train.lr_decay_epochs],
        [train.learning_rate * train.lr_decay_ratio ** i
         for i in range(len(train.lr_decay_epochs) + 1)])
  else:
    base = schedules.PiecewiseConstantDecay([total], [train.learning_rate] * 2)
  return LinearWarmup(base, warmup) if warmup else base


@keras.saving.register_keras_serializable(package='tf_slwta')
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
  """Scales another schedule linearly from 0 to 1 over `warmup_steps`.

  Keras' CosineDecay has warm-up built in; its piecewise-constant schedule
  does not, hence this wrapper.
  """

  def __init__(self, schedule, warmup_steps: int):
    self.schedule = schedule
    self.warmup_steps = warmup_steps

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    scale = tf.minimum(1.0, (step + 1.0) / float(self.warmup_steps))
    return scale * self.schedule(step)

  def get_config(self):
    return {'schedule': keras.saving.serialize_keras_object(self.schedule),
            'warmup_steps': self.warmup_steps}

  @classmethod
  def from_config(cls, config):
    return cls(keras.saving.deserialize_keras_object(config['schedule']),
               config['warmup_steps'])


def make_optimizer(train: config_lib.TrainConfig,
                   steps_per_epoch: int) -> keras.optimizers.Optimizer:
  """SGD with momentum, the schedule above and decoupled weight decay.

  Noise scales of Parametric Noise Injection are exempt from weight decay
  (it would drive them to 0). Call inside `strategy.scope()`.
  """
  optimizer = keras.optimizers.SGD(
      learning_rate=learning_rate_schedule(train, steps_per_epoch),
      momentum=train.momentum, nesterov=train.nesterov,
      weight_decay=train.weight_decay or None)
  if train.weight_decay:
    optimizer.exclude_from_weight_decay(var_names=[noise.ALPHA_NAME])
  return optimizer


@dataclasses.dataclass
class TrainingState:
  """What a run builds inside the strategy's scope and saves in checkpoints.

  Attributes:
    model: the Keras model (logits).
    optimizer: its optimizer; `optimizer.iterations` is the global step.
    totals: float64 `[4]` running sums of the current epoch (`_TOTALS`).
    kl_totals: float64 `[3]` the epoch's KL sums (`_KL_TOTALS`).
    checkpoint: `tf.train.Checkpoint` over the four (and the two below).
    manager: the `tf.train.CheckpointManager` of the run.
    ibp_optimizer: the IBP variational parameters' own optimizer, or None
      (training/variational.py).
    variational: the variables `ibp_optimizer` owns.
  """
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  totals: tf.Variable
  kl_totals: tf.Variable
  checkpoint: tf.train.Checkpoint
  manager: tf.train.CheckpointManager
  ibp_optimizer: Optional[keras.optimizers.Optimizer] = None
  variational: Tuple[tf.Variable, ...] = ()

  @property
  def global_step(self) -> int:
    """Optimizer steps taken so far."""
    return int(tf.convert_to_tensor(self.optimizer.iterations.value))


def build_training_state(config: config_lib.ExperimentConfig,
                         strategy: tf.distribute.Strategy,
                         steps_per_epoch: int) -> TrainingState:
  """Builds model and optimizer in the scope and restores the last checkpoint.

  Args:
    config: the run's settings; `config.output_dir` holds the checkpoints.
    strategy: the strategy the run trains under.
    steps_per_epoch: optimizer steps per epoch (for the schedule).

  Returns:
    The state, at step 0 for a new run or at the restored step.
  """
  keras.utils.set_random_seed(config.train.seed)
  info = data_lib.dataset_info(config.data.dataset)
  with strategy.scope():
    model = models.build_model(config.model, info)
    optimizer = make_optimizer(config.train, steps_per_epoch)
    weights, ibp_vars = variational.split_variables(model)
    optimizer.build(weights)
    ibp_optimizer = variational.make_ibp_optimizer(
        learning_rate_schedule(dataclasses.replace(
            config.train, learning_rate=config.train.ibp_learning_rate),
                               steps_per_epoch), ibp_vars)
  extra = layout.checkpoint_objects(model)
  if ibp_optimizer is not None:
    extra['ibp_optimizer'] = ibp_optimizer
  totals = tf.Variable(tf.zeros([len(_TOTALS)], tf.float64), trainable=False,
                       name='epoch_totals')
  kl_totals = tf.Variable(tf.zeros([len(_KL_TOTALS)], tf.float64),
                          trainable=False, name='epoch_kl')
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                   epoch_totals=totals, epoch_kl=kl_totals,
                                   **extra)
  manager = tf.train.CheckpointManager(
      checkpoint, distribute.worker_path(checkpoint_dir(config.output_dir),
                                         strategy),
      max_to_keep=config.train.keep_checkpoints, checkpoint_name='ckpt')
  latest = tf.train.latest_checkpoint(checkpoint_dir(config.output_dir))
  if latest:
    layout.check_checkpoint(latest, model)
    # Checkpoints from before the KL was recorded have no epoch_kl; such a
    # run counts the KL of its current epoch from the resumed step on.
    saved = {name for name, _ in tf.train.list_variables(latest)}
    restoring = checkpoint if any(
        n.startswith('epoch_kl/') for n in saved) else tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch_totals=totals)
    with strategy.scope():
      restoring.restore(latest).assert_existing_objects_matched()
    logging.info('Restored %s (step %d).', latest,
                 int(tf.convert_to_tensor(optimizer.iterations.value)))
  return TrainingState(model, optimizer, totals, kl_totals, checkpoint,
                       manager, ibp_optimizer, tuple(ibp_vars))


def check_run_identity(config: config_lib.ExperimentConfig) -> None:
  """Refuses to resume a checkpoint made with settings that change its meaning.

  Raises:
    RunMismatch: `config.output_dir` has checkpoints and a config.json whose
      identity fields (`config.RUN_IDENTITY_FIELDS`) differ from `config`.
  """
  path = os.path.join(config.output_dir, CONFIG_FILE)
  if not (tf.io.gfile.exists(path) and
          tf.train.latest_checkpoint(checkpoint_dir(config.output_dir))):
    return
  with tf.io.gfile.GFile(path) as f:
    saved = json.load(f)
  diffs = config_lib.identity_mismatches(saved, config)
  if diffs:
    listed = '; '.join(f'{k}: {old!r} there, {new!r} now'
                       for k, (old, new) in sorted(diffs.items()))
    raise RunMismatch(
        f'{config.output_dir} holds a run made with other settings ({listed}). '
        f'Pass a new --output_dir, or the same settings to resume it.')


def make_train_step(state: TrainingState, strategy: tf.distribute.Strategy, *,
                    global_batch_size: int, label_smoothing: float,
                    perturb: PerturbFn, clean_loss_weight: float = 0.0,
                    num_train_examples: int = 1, kl_anneal_steps: int = 0,
                    lwta_kl_weight: float = 1.0, ibp_kl_weight: float = 1.0):
  """Builds the compiled training step.

  With `clean_loss_weight` w > 0 the objective is
  w * loss(clean batch) + (1 - w) * loss(perturbed batch). KL terms of
  stochastic layers are weighted as `losses.kl_weights` says (winner KL by
  `lwta_kl_weight`, global KL by `ibp_kl_weight / num_train_examples`) and
  annealed over `kl_anneal_steps`.

  Returns:
    `train_step(iterator) -> (objective, stats)`: runs one optimizer step
    on the next distributed batch; `objective` is the float32 scalar loss
    summed over replicas, `stats` float32 `[4]` = (correct, examples) summed
    over replicas, then (KL, KL term) averaged over replicas: KL is the
    unscaled sum of `model.losses` (0 without stochastic layers), the KL
    term is KL as weighted in the objective.
  """
  model, optimizer = state.model, state.optimizer

  def objective(images, labels):
    """(logits, replica loss, `[2]` unscaled KL and KL term)."""
    logits = model(images, training=True)
    winner_weight, global_weight = losses.kl_weights(
        optimizer.iterations, num_train_examples,
        lwta_kl_weight=lwta_kl_weight, ibp_kl_weight=ibp_kl_weight,
        anneal_steps=kl_anneal_steps)
    loss = losses.replica_loss(
        model, labels, logits, global_batch_size=global_batch_size,
        label_smoothing=label_smoothing, winner_kl_weight=winner_weight,
        global_kl_weight=global_weight)
    winner, global_ = losses.kl_terms(model)
    return logits, loss, tf.stack(
        [winner + global_, winner_weight * winner + global_weight * global_])

  def step_fn(images, labels):
    perturbed = tf.stop_gradient(perturb(model, images, labels))
    with tf.GradientTape() as tape:
      logits, loss, kl = objective(perturbed, labels)
      if clean_loss_weight:
        _, clean_loss, clean_kl = objective(images, labels)
        loss = clean_loss_weight * clean_loss + (1 - clean_loss_weight) * loss
        kl = clean_loss_weight * clean_kl + (1 - clean_loss_weight) * kl
    grads = tape.gradient(loss, model.trainable_variables)
    variational.apply_gradients(optimizer, state.ibp_optimizer, grads,
                                model.trainable_variables, state.variational)
    correct = tf.reduce_sum(tf.cast(
        tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32))
    examples = tf.cast(tf.shape(labels)[0], tf.float32)
    return loss, tf.concat(
        [[correct, examples], kl / strategy.num_replicas_in_sync], axis=0)

  @tf.function
  def train_step(iterator):
    loss, stats = strategy.run(step_fn, args=next(iterator))
    return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
            strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None))

  return train_step


def make_eval_step(model: keras.Model, strategy: tf.distribute.Strategy):
  """Builds the compiled evaluation step.

  Returns:
    `eval_step(batch) -> float32 [3]`: (cross-entropy sum, correct,
    examples) of one distributed (images, labels, weights) batch, summed
    over replicas; padding examples (weight 0) do not count.
  """

  def step_fn(images, labels, weights):
    logits = model(images, training=False)
    ce = losses.per_example_cross_entropy(labels, logits)
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32)
    return tf.stack([tf.reduce_sum(weights * ce),
                     tf.reduce_sum(weights * correct), tf.reduce_sum(weights)])

  @tf.function
  def eval_step(batch):
    return strategy.reduce(tf.distribute.ReduceOp.SUM,
                           strategy.run(step_fn, args=batch), axis=None)

  return eval_step


def evaluate(strategy: tf.distribute.Strategy, eval_step, images: np.ndarray,
             labels: np.ndarray, global_batch_size: int) -> Dict[str, float]:
  """Clean loss and accuracy over every example of a split.

  Args:
    strategy: the run's strategy.
    eval_step: from `make_eval_step`.
    images: uint8 `[N, H, W, C]`.
    labels: int64 `[N]`.
    global_batch_size: evaluation batch over all replicas.

  Returns:
    {'loss': mean cross-entropy >= 0, 'accuracy': in [0, 1],
     'examples': N}.
  """
  dataset = strategy.distribute_datasets_from_function(
      data_lib.eval_dataset_fn(images, labels, global_batch_size))
  totals = np.zeros(3, np.float64)
  for batch in dataset:
    totals += eval_step(batch).numpy()
  ce_sum, correct, count = totals
  return {'loss': ce_sum / count, 'accuracy': correct / count,
          'examples': int(count)}


def _check_finite(state: TrainingState, where: str) -> None:
  totals = state.totals.numpy()
  finite = np.all(np.isfinite(totals)) and all(
      bool(tf.reduce_all(tf.math.is_finite(v))) for v in state.model.trainable_variables)
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


def _mean_kl(state: TrainingState) -> Dict[str, float]:
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


def _append_metrics(path: str, record: Dict[str, float]) -> None:
  """Writes one JSON line per epoch; a replayed epoch replaces its old line."""
  lines = []
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      lines = [l for l in f.read().splitlines()
               if l.strip() and json.loads(l).get('epoch') != record['epoch']]
  lines.append(json.dumps(record, sort_keys=True))
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _write_json(path: str, value) -> None:
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(json.dumps(value, indent=2, sort_keys=True) + '\n')


def train(config: config_lib.ExperimentConfig, strategy: tf.distribute.Strategy,
          *, perturb: PerturbFn = identity_perturbation,
          train_arrays: Optional[Arrays] = None,
          test_arrays: Optional[Arrays] = None) -> Dict[str, float]:
  """Trains (or resumes) the configured model and evaluates it every epoch.

  Writes under `config.output_dir`: config.json, checkpoints/, summaries/
  (TensorBoard), metrics.jsonl (one line per epoch) and results.json.

  Args:
    config: the run's settings.
    strategy: from `distribute.make_strategy`.
    perturb: the per-batch perturbation seam (see module docstring).
    train_arrays, test_arrays: (uint8 images `[N, H, W, C]`, int64 labels
      `[N]`); loaded from `config.data` when None.

  Returns:
    The last epoch's metrics: 'epoch', 'step', 'train/loss',
    'train/accuracy', 'test/loss', 'test/accuracy' (accuracies in [0, 1]),
    'train/kl' and 'train/kl_term' (see `_mean_kl`).
  """
  data_cfg, train_cfg = config.data, config.train
  replicas = strategy.num_replicas_in_sync
  for name, batch in (('batch_size', data_cfg.batch_size),
                      ('eval_batch_size', data_cfg.eval_batch_size)):
    if batch % replicas:
      raise ValueError(f'--{name}={batch} does not split evenly over '
                       f'{replicas} replicas; use a multiple of {replicas}.')
  check_run_identity(config)
  train_images, train_labels = train_arrays or data_lib.load_arrays(data_cfg, 'train')
  test_images, test_labels = test_arrays or data_lib.load_arrays(data_cfg, 'test')
  steps_per_epoch = data_lib.steps_per_epoch(len(train_images), data_cfg.batch_size)

  chief = distribute.is_chief(strategy)
  if chief:
    tf.io.gfile.makedirs(config.output_dir)
    _write_json(os.path.join(config.output_dir, CONFIG_FILE), config.to_dict())
  state = build_training_state(config, strategy, steps_per_epoch)
  train_step = make_train_step(
      state, strategy, global_batch_size=data_cfg.batch_size,
      label_smoothing=train_cfg.label_smoothing, perturb=perturb,
      clean_loss_weight=train_cfg.clean_loss_weight,
      num_train_examples=len(train_images),
      kl_anneal_steps=int(train_cfg.kl_anneal_epochs * steps_per_epoch),
      lwta_kl_weight=train_cfg.lwta_kl_weight,
      ibp_kl_weight=train_cfg.ibp_kl_weight)
  # A perturbation may report its own numbers (e.g. the mixture's branch
  # shares) through a `summaries() -> {name: value}` method.
  perturb_summaries = getattr(perturb, 'summaries', dict)
  eval_step = make_eval_step(state.model, strategy)
  writer = (tf.summary.create_file_writer(
      os.path.join(config.output_dir, 'summaries')) if chief
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
    test = evaluate(strategy, eval_step, test_images, test_labels,
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
      _append_metrics(os.path.join(config.output_dir, METRICS_FILE), record)
      print(json.dumps(record, sort_keys=True), flush=True)
    else:
      logging.info('Worker %d finished epoch %d: %s',
                   distribute.task_id(strategy), epoch + 1,
                   json.dumps(record, sort_keys=True))
    _check_finite(state, f'at the end of epoch {epoch + 1}')
    state.manager.save(checkpoint_number=record['step'])

  if not record:  # Nothing left to train: report the finished model.
    test = evaluate(strategy, eval_step, test_images, test_labels,
                    data_cfg.eval_batch_size)
    record = {'epoch': start_epoch, 'step': state.global_step,
              'test/loss': test['loss'], 'test/accuracy': test['accuracy'],
              'test/examples': test['examples']}
  if chief:
    _write_json(os.path.join(config.output_dir, RESULTS_FILE), record)
  else:
    tf.io.gfile.rmtree(os.path.dirname(state.manager.directory))
  return record


def restore_model(config: config_lib.ExperimentConfig,
                  strategy: tf.distribute.Strategy) -> keras.Model:
  """Builds the configured model and loads the run's latest checkpoint.

  Raises:
    FileNotFoundError: `config.output_dir` has no checkpoint; the message
      says how to make one.
  """
  latest = tf.train.latest_checkpoint(checkpoint_dir(config.output_dir))
  if not latest:
    raise FileNotFoundError(
        f'No checkpoint in {checkpoint_dir(config.output_dir)}. Train first '
        f'with --mode=train and the same --output_dir and flagfile.')
  check_run_identity(config)
  keras.utils.set_random_seed(config.train.seed)
  with strategy.scope():
    model = models.build_model(config.model,
                               data_lib.dataset_info(config.data.dataset))
    layout.check_checkpoint(latest, model)
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
  logging.info('Restored model weights from %s.', latest)
  return model


def evaluate_model(config: config_lib.ExperimentConfig,
                   strategy: tf.distribute.Strategy, model: keras.Model,
                   test_arrays: Optional[Arrays] = None) -> Dict[str, float]:
  """Clean test metrics of `model`; writes `<output_dir>/eval_results.json`.

  Returns:
    {'loss': mean cross-entropy, 'accuracy' in [0, 1], 'examples'}.
  """
  images, labels = test_arrays or data_lib.load_arrays(config.data, 'test')
  result = evaluate(strategy, make_eval_step(model, strategy), images, labels,
                    config.data.eval_batch_size)
  if distribute.is_chief(strategy):
    _write_json(os.path.join(config.output_dir, 'eval_results.json'), result)
  return result


def evaluate_checkpoint(config: config_lib.ExperimentConfig,
                        strategy: tf.distribute.Strategy,
                        test_arrays: Optional[Arrays] = None) -> Dict[str, float]:
  """Clean test metrics of the run's latest checkpoint (see `evaluate_model`)."""
  return evaluate_model(config, strategy, restore_model(config, strategy),
                        test_arrays)


def print_table(rows: Dict[str, Dict[str, float]], stream=sys.stdout) -> None:
  """Prints {row name: {'accuracy': ..., 'loss': ...}} as a small table."""
  stream.write(f'{"split":<10} {"accuracy (%)":>13} {"loss":>8} {"examples":>9}\n')
  for name, row in rows.items():
    stream.write(f'{name:<10} {100 * row["accuracy"]:>13.2f} '
                 f'{row["loss"]:>8.4f} {row["examples"]:>9d}\n')
  stream.flush()

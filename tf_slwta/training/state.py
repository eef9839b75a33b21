"""What a run keeps in its checkpoints, and how it is built and restored.

A `tf.train.CheckpointManager` under `<output_dir>/checkpoints` saves the
model, the optimizer (its `iterations` is the global step) and the running
totals of the epoch, at the end of each epoch and optionally every N steps.
"""

import dataclasses

from absl import logging
import keras
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta import run_folder
from tf_slwta.training import distribute
from tf_slwta.training import optimizer as optimizer_lib

# Running sums of the epoch kept in the checkpoint: objective summed over
# steps, steps, correct predictions, examples.
TOTALS = ('objective', 'steps', 'correct', 'examples')
# The KL of the stochastic layers, summed over the epoch's steps: unscaled
# (sum of model.losses), as weighted in the objective, and the steps
# counted. A variable of its own, so checkpoints from before it still load.
KL_TOTALS = ('kl', 'kl_term', 'steps')


@dataclasses.dataclass
class TrainingState:
  """What a run builds inside the strategy's scope and saves in checkpoints.

  Attributes:
    model: the Keras model (logits).
    optimizer: its optimizer; `optimizer.iterations` is the global step.
    totals: float64 `[4]` running sums of the current epoch (`TOTALS`).
    kl_totals: float64 `[3]` the epoch's KL sums (`KL_TOTALS`).
    checkpoint: `tf.train.Checkpoint` over the four.
    manager: the `tf.train.CheckpointManager` of the run.
  """
  model: keras.Model
  optimizer: keras.optimizers.Optimizer
  totals: tf.Variable
  kl_totals: tf.Variable
  checkpoint: tf.train.Checkpoint
  manager: tf.train.CheckpointManager

  @property
  def global_step(self) -> int:
    """Optimizer steps taken so far."""
    return int(tf.convert_to_tensor(self.optimizer.iterations.value))


def latest_checkpoint(output_dir: str):
  """Path prefix of the run's latest checkpoint, or None."""
  return tf.train.latest_checkpoint(run_folder.checkpoint_dir(output_dir))


def check_run_identity(config: config_lib.ExperimentConfig) -> None:
  """Refuses to resume a checkpoint made with settings that change its meaning.

  Raises:
    run_folder.RunMismatch: `config.output_dir` has checkpoints and a
      config.json whose identity fields differ from `config`.
  """
  run_folder.RunFolder(config.output_dir).check_identity(
      config, has_checkpoint=bool(latest_checkpoint(config.output_dir)))


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
    optimizer = optimizer_lib.make_optimizer(config.train, steps_per_epoch)
    optimizer.build(model.trainable_variables)
  totals = tf.Variable(tf.zeros([len(TOTALS)], tf.float64), trainable=False,
                       name='epoch_totals')
  kl_totals = tf.Variable(tf.zeros([len(KL_TOTALS)], tf.float64),
                          trainable=False, name='epoch_kl')
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                   epoch_totals=totals, epoch_kl=kl_totals)
  manager = tf.train.CheckpointManager(
      checkpoint, distribute.worker_path(
          run_folder.checkpoint_dir(config.output_dir), strategy),
      max_to_keep=config.train.keep_checkpoints, checkpoint_name='ckpt')
  latest = latest_checkpoint(config.output_dir)
  if latest:
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
                       manager)


def restore_model(config: config_lib.ExperimentConfig,
                  strategy: tf.distribute.Strategy) -> keras.Model:
  """Builds the configured model and loads the run's latest checkpoint.

  Raises:
    FileNotFoundError: `config.output_dir` has no checkpoint; the message
      says how to make one.
  """
  latest = latest_checkpoint(config.output_dir)
  if not latest:
    raise FileNotFoundError(
        f'No checkpoint in {run_folder.checkpoint_dir(config.output_dir)}. '
        f'Train first with --mode=train and the same --output_dir and '
        f'flagfile.')
  check_run_identity(config)
  keras.utils.set_random_seed(config.train.seed)
  with strategy.scope():
    model = models.build_model(config.model,
                               data_lib.dataset_info(config.data.dataset))
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
  logging.info('Restored model weights from %s.', latest)
  return model

"""What a run keeps in its checkpoints, and how it is built and restored.

A `tf.train.CheckpointManager` under `<output_dir>/checkpoints` saves the
model, the optimizer (its `iterations` is the global step) and the running
totals of the epoch, at the end of each epoch and optionally every N steps.
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

from absl import logging
import keras
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta import run_folder
from tf_slwta.layers import layout
from tf_slwta.layers import randomness
from tf_slwta.training import checkpoints
from tf_slwta.training import distribute
from tf_slwta.training import optimizer as optimizer_lib
from tf_slwta.training import variational

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


def latest_checkpoint(output_dir: str) -> Optional[str]:
  """Path prefix of the run's newest intact checkpoint (what restores), or None."""
  return checkpoints.newest_intact(run_folder.checkpoint_dir(output_dir),
                                   announce=logging.info, repair=False)


def check_run_identity(config: config_lib.ExperimentConfig) -> None:
  """Refuses to resume a checkpoint made with settings that change its meaning.

  Raises:
    run_folder.RunMismatch: `config.output_dir` has checkpoints and a
      config.json whose identity fields differ from `config`.
  """
  folder = run_folder.RunFolder(config.output_dir)
  folder.check_identity(config, has_checkpoint=bool(
      checkpoints.candidates(folder.checkpoint_dir)))


def _restorable(items: Dict[str, Any], path: str) -> tf.train.Checkpoint:
  """A checkpoint over those of `items` that `path` holds.

  Checkpoints from before a part was kept (the epoch's KL, seed states, the
  mixture's stream) still restore; such a run starts that part afresh.
  """
  saved = {name.split('/', 1)[0] for name, _ in tf.train.list_variables(path)}
  missing = sorted(set(items) - saved)
  if missing:
    logging.info('%s has no %s; those start afresh.', path, ', '.join(missing))
  return tf.train.Checkpoint(**{k: v for k, v in items.items() if k in saved})


def build_training_state(config: config_lib.ExperimentConfig,
                         strategy: tf.distribute.Strategy,
                         steps_per_epoch: int,
                         extra: Optional[Dict[str, Any]] = None
                         ) -> TrainingState:
  """Builds model and optimizer in the scope and restores the last checkpoint.

  The checkpoint holds the model, the optimizer, the epoch's running sums,
  every seed generator state of the model (`randomness.seed_states`), the
  `extra` items and the run's identity settings (`checkpoints`).

  Args:
    config: the run's settings; `config.output_dir` holds the checkpoints.
    strategy: the strategy the run trains under.
    steps_per_epoch: optimizer steps per epoch (for the schedule).
    extra: more trackables to checkpoint by name (e.g. the adversarial
      mixture's random stream and counts).

  Returns:
    The state, at step 0 for a new run or at the newest intact checkpoint.

  Raises:
    run_folder.RunMismatch: that checkpoint was made with other settings.
  """
  keras.utils.set_random_seed(config.train.seed)
  info = data_lib.dataset_info(config.data.dataset)
  with strategy.scope():
    model = models.build_model(config.model, info)
    optimizer = optimizer_lib.make_optimizer(config.train, steps_per_epoch)
    weights, ibp_vars = variational.split_variables(model)
    optimizer.build(weights)
    ibp_optimizer = variational.make_ibp_optimizer(
        optimizer_lib.learning_rate_schedule(dataclasses.replace(
            config.train, learning_rate=config.train.ibp_learning_rate),
                                             steps_per_epoch), ibp_vars)
  extra = {**layout.checkpoint_objects(model), **(extra or {})}
  if ibp_optimizer is not None:
    extra['ibp_optimizer'] = ibp_optimizer
  totals = tf.Variable(tf.zeros([len(TOTALS)], tf.float64), trainable=False,
                       name='epoch_totals')
  kl_totals = tf.Variable(tf.zeros([len(KL_TOTALS)], tf.float64),
                          trainable=False, name='epoch_kl')
  items = {'model': model, 'optimizer': optimizer, 'epoch_totals': totals,
           'epoch_kl': kl_totals, 'seeds': randomness.seed_states(model),
           **(extra or {})}
  if not items['seeds']:
    del items['seeds']  # An empty dict saves nothing to tell apart.
  settings = tf.Variable(checkpoints.settings_json(config), trainable=False,
                         name=checkpoints.SETTINGS_KEY)
  checkpoint = tf.train.Checkpoint(
      **items, **{checkpoints.SETTINGS_KEY: settings})
  directory = run_folder.checkpoint_dir(config.output_dir)
  chief = distribute.is_chief(strategy)
  latest = checkpoints.newest_intact(
      directory, announce=_say if chief else logging.info, repair=chief)
  if latest:
    checkpoints.check_settings(latest, config)
    layout.check_checkpoint(latest, model)
    with strategy.scope():
      _restorable(items, latest).restore(
          latest).assert_existing_objects_matched().expect_partial()
    step = int(tf.convert_to_tensor(optimizer.iterations.value))
    epoch, within = divmod(step, steps_per_epoch)
    (_say if chief else logging.info)(
        f'Resumed {latest} (step {step}, ' + (
            f'step {within} of epoch {epoch + 1}).' if within else
            f'end of epoch {epoch}).'))
  # Made after the repair above, which may rewrite the state file it reads.
  manager = tf.train.CheckpointManager(
      checkpoint, distribute.worker_path(directory, strategy),
      max_to_keep=config.train.keep_checkpoints,
      checkpoint_name=checkpoints.PREFIX)
  return TrainingState(model, optimizer, totals, kl_totals, checkpoint,
                       manager, ibp_optimizer, tuple(ibp_vars))


def _say(message: str) -> None:
  print(message, flush=True)


def restore_model(config: config_lib.ExperimentConfig,
                  strategy: tf.distribute.Strategy) -> keras.Model:
  """Builds the configured model and loads the run's newest intact checkpoint.

  Raises:
    FileNotFoundError: `config.output_dir` has no checkpoint; the message
      says how to make one.
    run_folder.RunMismatch: the checkpoint holds another model.
  """
  directory = run_folder.checkpoint_dir(config.output_dir)
  latest = checkpoints.newest_intact(directory, announce=_say)
  if not latest:
    raise FileNotFoundError(
        f'No checkpoint in {directory}. Train first with --mode=train and '
        f'the same --output_dir.')
  checkpoints.check_settings(latest, config, only=config_lib.MODEL_IDENTITY)
  keras.utils.set_random_seed(config.train.seed)
  with strategy.scope():
    model = models.build_model(config.model,
                               data_lib.dataset_info(config.data.dataset))
    layout.check_checkpoint(latest, model)
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
  logging.info('Restored model weights from %s.', latest)
  return model

"""SGD with momentum, decoupled weight decay and the learning-rate schedules."""

import keras
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta.layers import noise


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

"""Why the seed CNN with LWTA diverged at the quickstart settings.

Trains variants of the seed CNN on full Fashion-MNIST with the quickstart's
optimizer (SGD, momentum 0.9, decoupled weight decay 5e-4, batch 128,
cosine over one epoch) for a few hundred steps and reports the first
cross-entropies, the largest one, where it stopped being finite, and the
accuracy of the last 20 batches. Each variant changes one thing, so the
table separates the suspects: the KL term, the sampling (hard winners),
the initial logits, the step size, gradient clipping, BatchNorm.

    python benchmarks/lwta_divergence.py             # writes BENCHMARKS.md
    python benchmarks/lwta_divergence.py --write=false --steps=100
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta.training import optimizer as optimizer_lib
from tf_slwta.training import losses

_STEPS = flags.DEFINE_integer('steps', 150, 'Training steps per variant.')
_WRITE = flags.DEFINE_bool('write', True, 'Update BENCHMARKS.md.')

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'BENCHMARKS.md')
START, END = '<!-- lwta_divergence:start -->', '<!-- lwta_divergence:end -->'

# (name, model settings, learning rate, options).
VARIANTS = (
    ('ReLU (the quickstart)', dict(activation='relu'), 0.05, {}),
    ('LWTA, no BatchNorm (before this change)', {}, 0.05, {}),
    ('LWTA, no BatchNorm, no KL term', {}, 0.05, {'no_kl': True}),
    ('LWTA, no BatchNorm, hard winners (no sampling)',
     dict(lwta_deterministic=True), 0.05, {}),
    ('LWTA, no BatchNorm, logits layer initialized to 0', {}, 0.05,
     {'zero_logits': True}),
    ('LWTA, no BatchNorm, hard winners, logits initialized to 0',
     dict(lwta_deterministic=True), 0.05, {'zero_logits': True}),
    ('LWTA, no BatchNorm, gradient norm clipped at 5', {}, 0.05,
     {'clip': True}),
    ('LWTA, no BatchNorm, learning rate 0.01', {}, 0.01, {}),
    ('LWTA, no BatchNorm, learning rate 0.02', {}, 0.02, {}),
    ('ReLU, learning rate 0.1', dict(activation='relu'), 0.1, {}),
    ('LWTA + BatchNorm (the default now)', dict(seed_cnn_batch_norm=True),
     0.05, {}),
    ('LWTA + BatchNorm, hard winners',
     dict(seed_cnn_batch_norm=True, lwta_deterministic=True), 0.05, {}),
    ('LWTA + BatchNorm, learning rate 0.2', dict(seed_cnn_batch_norm=True),
     0.2, {}),
)


def run_variant(settings, learning_rate, options, images, labels, steps):
  """CE per step (stops at the first non-finite one) and batch accuracies."""
  keras.utils.set_random_seed(42)
  base = dict(activation='lwta', seed_cnn_batch_norm=False)
  model = models.build_model(config_lib.ModelConfig(**{**base, **settings}),
                             data_lib.dataset_info('fashion_mnist'))
  if options.get('zero_logits'):
    model.get_layer('logits').kernel.assign(
        tf.zeros_like(model.get_layer('logits').kernel))
  steps_per_epoch = data_lib.steps_per_epoch(len(images), 128)
  optimizer = optimizer_lib.make_optimizer(config_lib.TrainConfig(
      epochs=1, learning_rate=learning_rate), steps_per_epoch)
  if options.get('clip'):
    optimizer.global_clipnorm = 5.0
  winner_weight = 0.0 if options.get('no_kl') else 1e-3
  order = np.random.default_rng(1).permutation(len(images))

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      logits = model(x, training=True)
      ce = tf.reduce_mean(losses.per_example_cross_entropy(y, logits))
      loss = losses.replica_loss(model, y, logits, global_batch_size=128,
                                 winner_kl_weight=winner_weight)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    accuracy = tf.reduce_mean(tf.cast(tf.argmax(logits, -1) == y, tf.float32))
    return ce, accuracy

  ces, accuracies = [], []
  for i in range(steps):
    batch = order[(i * 128) % len(images):][:128]
    ce, accuracy = step(tf.cast(images[batch], tf.float32) / 255.0,
                        tf.constant(labels[batch]))
    ces.append(float(ce))
    accuracies.append(float(accuracy))
    if not np.isfinite(ces[-1]):
      break
  return ces, accuracies


def main(argv):
  del argv
  tf.get_logger().setLevel('ERROR')
  images, labels = data_lib.load_arrays(config_lib.DataConfig(), 'train')
  lines = [f'Seed CNN on the 60,000 Fashion-MNIST training images, batch 128,'
           f' SGD with momentum 0.9 and weight decay 5e-4, cosine over one '
           f'epoch, seed 42, {_STEPS.value} steps; LWTA rows U = 2, T = 0.67,'
           f' winner KL weight 1e-3 unless said.', '',
           '| variant | learning rate | cross-entropy, steps 1-5 | largest | '
           'non-finite at step | accuracy, last 20 batches (%) |',
           '|---|---|---|---|---|---|']
  for name, settings, learning_rate, options in VARIANTS:
    ces, accuracies = run_variant(settings, learning_rate, options, images,
                                  labels, _STEPS.value)
    finite = np.isfinite(ces[-1])
    largest = max(c for c in ces if np.isfinite(c)) if any(
        np.isfinite(ces)) else float('nan')
    lines.append(
        f'| {name} | {learning_rate:g} | '
        f'{", ".join(f"{c:.1f}" for c in ces[:5])} | {largest:.3g} | '
        f'{"-" if finite else len(ces)} | '
        f'{100 * np.mean(accuracies[-20:]):.1f} |')
    print(lines[-1], flush=True)
  text = '\n'.join(lines)
  print(text)
  if _WRITE.value:
    current = open(BENCHMARKS).read()
    if START not in current:
      current += f'\n## Why LWTA diverged\n\n{START}\n{END}\n'
    head, rest = current.split(START, 1)
    with open(BENCHMARKS, 'w') as f:
      f.write(head + f'{START}\nCommand: `python benchmarks/lwta_divergence'
              f'.py`\n\n{text}\n{END}' + rest.split(END, 1)[1])


if __name__ == '__main__':
  app.run(main)

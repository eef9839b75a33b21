"""Training-step cost of stochastic LWTA against its ReLU twin.

Each pair of models has the same layers and shapes; only the activation
differs (and, in the IBP rows, the blocks' utility masks). The seed CNN with
LWTA has a BatchNorm before each activation (models/seed_cnn.py says why):
its ReLU twin here has them too, and the seed's own BatchNorm-free ReLU CNN
is shown beside it. Every training step includes the KL terms, weighted as
the defaults weight them (TrainConfig, N = 60,000). Steps are timed in
interleaved rounds within one process (the median round is reported), so
the ratios are measured side by side.

    python benchmarks/lwta_overhead.py            # writes BENCHMARKS.md
    python benchmarks/lwta_overhead.py --rounds=3 --write=false
"""

import os
import sys
import time

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
from tf_slwta.training import losses
from tf_slwta.training import variational

_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Training steps per round.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Images per step.')
_WRITE = flags.DEFINE_bool('write', True, 'Update BENCHMARKS.md.')

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'BENCHMARKS.md')
START, END = '<!-- lwta:start -->', '<!-- lwta:end -->'

PAIRS = {
    'seed_cnn': config_lib.ModelConfig(seed_cnn_batch_norm=True),
    'wide_resnet 16-1': config_lib.ModelConfig(name='wide_resnet', depth=16),
}
# (row label, model changes); the first row is the ReLU twin.
VARIANTS = (('relu', {}), ('lwta', {'activation': 'lwta'}),
            ('lwta+ibp', {'activation': 'lwta', 'ibp': True}))
SEED_RELU = ('relu, no BatchNorm (the seed\'s CNN)',
             {'seed_cnn_batch_norm': False})


def _step_fn(model, batch):
  train = config_lib.TrainConfig()
  optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
  weights, ibp_vars = variational.split_variables(model)
  optimizer.build(weights)
  ibp_optimizer = variational.make_ibp_optimizer(train.ibp_learning_rate,
                                                 ibp_vars)
  images = tf.random.uniform((batch, 28, 28, 1), seed=1)
  labels = tf.random.uniform((batch,), 0, 10, tf.int64, seed=2)
  winner_weight, global_weight = losses.kl_weights(
      tf.constant(0), 60000, lwta_kl_weight=train.lwta_kl_weight,
      ibp_kl_weight=train.ibp_kl_weight)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = losses.replica_loss(model, labels, logits,
                                 global_batch_size=batch,
                                 winner_kl_weight=winner_weight,
                                 global_kl_weight=global_weight)
    grads = tape.gradient(loss, model.trainable_variables)
    variational.apply_gradients(optimizer, ibp_optimizer, grads,
                                model.trainable_variables, ibp_vars)
    return loss

  return step


def main(argv):
  del argv
  # Each variant is its own tf.function, traced once; TF's retracing
  # warning counts them together and would be noise here.
  tf.get_logger().setLevel('ERROR')
  info = data_lib.dataset_info('fashion_mnist')
  variants = {}
  for name, base in PAIRS.items():
    rows = VARIANTS + ((SEED_RELU,) if name == 'seed_cnn' else ())
    for label, changes in rows:
      cfg = config_lib.ModelConfig(**{**base.__dict__, **changes})
      step = _step_fn(models.build_model(cfg, info), _BATCH.value)
      step()  # Trace and warm up.
      variants[(name, label)] = step
  times = {key: [] for key in variants}
  for _ in range(_ROUNDS.value):
    for key, step in variants.items():
      start = time.perf_counter()
      for _ in range(_STEPS.value):
        loss = step()
      float(loss)
      times[key].append((time.perf_counter() - start) / _STEPS.value)
  lines = [f'Batch {_BATCH.value} Fashion-MNIST-shaped images; median of '
           f'{_ROUNDS.value} interleaved rounds of {_STEPS.value} steps; '
           f'TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores.', '',
           '| model | activation | ms / step | x ReLU twin |',
           '|---|---|---|---|']
  for name in PAIRS:
    relu = np.median(times[(name, 'relu')])
    labels = [label for label, _ in VARIANTS] + (
        [SEED_RELU[0]] if name == 'seed_cnn' else [])
    for label in labels:
      ms = np.median(times[(name, label)])
      lines.append(f'| {name} | {label} | {1000 * ms:.1f} | {ms / relu:.2f} |')
  text = '\n'.join(lines)
  print(text)
  if _WRITE.value:
    current = open(BENCHMARKS).read()
    if START not in current:
      current += (f'\n## Stochastic LWTA: training-step overhead\n\n'
                  f'{START}\n{END}\n')
    head, rest = current.split(START, 1)
    tail = rest.split(END, 1)[1]
    with open(BENCHMARKS, 'w') as f:
      f.write(head + f'{START}\nCommand: `python benchmarks/lwta_overhead.py`'
              f'\n\n{text}\n{END}' + tail)


if __name__ == '__main__':
  app.run(main)

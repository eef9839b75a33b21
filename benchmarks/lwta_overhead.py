"""Training-step cost of stochastic LWTA against its ReLU twin.

Each pair of models has the same layers and shapes; only the activation
differs (and, in the IBP rows, the kernels' utility masks). Steps are timed
in interleaved rounds within one process (the median round is reported), so
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

_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Training steps per round.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Images per step.')
_WRITE = flags.DEFINE_bool('write', True, 'Update BENCHMARKS.md.')

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'BENCHMARKS.md')
START, END = '<!-- lwta:start -->', '<!-- lwta:end -->'

PAIRS = {
    'seed_cnn': config_lib.ModelConfig(),
    'wide_resnet 16-1': config_lib.ModelConfig(name='wide_resnet', depth=16),
}


def _step_fn(model, batch):
  optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
  optimizer.build(model.trainable_variables)
  images = tf.random.uniform((batch, 28, 28, 1), seed=1)
  labels = tf.random.uniform((batch,), 0, 10, tf.int64, seed=2)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      loss = losses.replica_loss(model, labels, logits,
                                 global_batch_size=batch,
                                 winner_kl_weight=1e-3,
                                 global_kl_weight=1 / 60000)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
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
    for label, changes in (('relu', {}), ('lwta', {'activation': 'lwta'}),
                           ('lwta+ibp', {'activation': 'lwta', 'ibp': True})):
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
    for label in ('relu', 'lwta', 'lwta+ibp'):
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

"""What the IBP's pruning buys at test time: a smaller network, as accurate.

Restores a trained IBP run, builds its pruned copy (`models/prune.py`: the
pruned blocks removed, the kept utilities folded into BatchNorm or the
kernels), and measures side by side, in one process:
  * the share of blocks pruned, per layer and in all;
  * test accuracy of the model as trained (IBP masks applied) and of the
    pruned copy, decisions averaged over --mc_samples passes;
  * inference time of one pass over a batch, median of interleaved rounds.

    python benchmarks/ibp_pruning.py --run=runs/slwta_fashion_mnist
"""

import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import tf_slwta
from tf_slwta import attacks
from tf_slwta import data as data_lib
from tf_slwta.layers import ibp
from tf_slwta.models import prune

_RUN = flags.DEFINE_string('run', None, 'Output folder of a trained IBP run.')
_EXAMPLES = flags.DEFINE_integer('examples', 2000, 'Test images scored.')
_MC = flags.DEFINE_integer('mc_samples', 10, 'Passes per decision.')
_BATCH = flags.DEFINE_integer('batch_size', 500, 'Images per timed pass.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Interleaved timing rounds.')
_WRITE = flags.DEFINE_bool('write', True, 'Update BENCHMARKS.md.')

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'BENCHMARKS.md')
START, END = '<!-- ibp_pruning:start -->', '<!-- ibp_pruning:end -->'


def main(argv):
  del argv
  tf.get_logger().setLevel('ERROR')
  model, _, config = tf_slwta.load_run(_RUN.value)
  info = data_lib.dataset_info(config.data.dataset)
  small = prune.compact(model, config.model, info)
  images, labels = data_lib.load_arrays(config.data, 'test')
  x = tf.cast(images[:_EXAMPLES.value], tf.float32) / 255.0
  y = labels[:_EXAMPLES.value]

  def accuracy(net):
    fn = lambda v: net(v, training=False)
    predictions = [attacks.predict(fn, x[s:s + 500], _MC.value).numpy()
                   for s in range(0, len(y), 500)]
    return float(np.mean(np.concatenate(predictions) == y))

  passes = {name: tf.function(lambda v, net=net: net(v, training=False))
            for name, net in (('as trained', model), ('pruned copy', small))}
  batch = x[:_BATCH.value]
  for fn in passes.values():
    fn(batch)
  times = {name: [] for name in passes}
  for _ in range(_ROUNDS.value):
    for name, fn in passes.items():
      start = time.perf_counter()
      for _ in range(5):
        out = fn(batch)
      float(tf.reduce_sum(out))
      times[name].append((time.perf_counter() - start) / 5)
  fractions = ibp.pruned_fractions(model)
  base = np.median(times['as trained'])
  lines = [f'Run: `{_RUN.value}` ({config.model.name}'
           f'{f"-{config.model.depth}-{config.model.widen_factor}" if config.model.name == "wide_resnet" else ""}'
           f', {config.model.activation}, IBP threshold '
           f'{config.model.ibp_threshold:g}); {len(y)} test images, '
           f'decisions averaged over {_MC.value} passes; one pass over '
           f'{_BATCH.value} images timed, median of {_ROUNDS.value} '
           f'interleaved rounds; TensorFlow {tf.__version__}, '
           f'{os.cpu_count()} CPU cores.', '',
           f'Blocks pruned: {100 * fractions["all"]:.1f}% in all; per layer: '
           + ', '.join(f'{k} {100 * v:.0f}%' for k, v in fractions.items()
                       if k != 'all') + '.', '',
           '| network | parameters | test accuracy (%) | ms / pass | speed-up |',
           '|---|---|---|---|---|']
  for name, net in (('as trained', model), ('pruned copy', small)):
    ms = np.median(times[name])
    lines.append(f'| {name} | {net.count_params():,} | '
                 f'{100 * accuracy(net):.2f} | {1000 * ms:.1f} | '
                 f'{base / ms:.2f}x |')
  text = '\n'.join(lines)
  print(text)
  if _WRITE.value:
    current = open(BENCHMARKS).read()
    if START not in current:
      current += (f'\n## IBP: what pruning buys at test time\n\n'
                  f'{START}\n{END}\n')
    head, rest = current.split(START, 1)
    with open(BENCHMARKS, 'w') as f:
      f.write(head + f'{START}\nCommand: `python benchmarks/ibp_pruning.py '
              f'--run={_RUN.value}`\n\n{text}\n{END}' + rest.split(END, 1)[1])


if __name__ == '__main__':
  flags.mark_flag_as_required('run')
  app.run(main)

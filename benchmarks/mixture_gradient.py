"""How informative adversarial training's attack is, per gradient path.

`defenses/mixture.py` builds each training batch's PGD examples through a
logits function; for an LWTA model its gradient can come from the model as
served ('sample': test temperature 0.01, whose input gradient is the 0/1
winner mask with rare spikes), from the training temperature (0.67), or
from the adaptive surrogates ('expected', 'straight_through'). This script
attacks a trained LWTA model with the training attack's settings through
each path and scores the examples with the model's own decision (softmax
averaged over 10 passes): the lower the accuracy, the more informative the
attack the model would be trained on.

    python benchmarks/mixture_gradient.py --run=/work/runs/issue12/q_lwta
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import tf_slwta
from tf_slwta import attacks
from tf_slwta import data as data_lib
from tf_slwta.evaluation import scoring
from tf_slwta.layers import lwta
from tf_slwta.layers import surrogate

_RUN = flags.DEFINE_string('run', None, 'Output folder of a trained LWTA run.')
_EXAMPLES = flags.DEFINE_integer('examples', 1000, 'Test images attacked.')
_EPS = flags.DEFINE_float('eps', 0.1, 'L-inf budget of the training attack.')
_ALPHA = flags.DEFINE_float('alpha', 0.025, 'PGD step.')
_STEPS = flags.DEFINE_integer('steps', 5, 'PGD steps.')
_PASSES = flags.DEFINE_integer('mc_samples', 10, 'Passes per decision.')


def main(argv):
  del argv
  tf.get_logger().setLevel('ERROR')
  model, _, config = tf_slwta.load_run(_RUN.value)
  images, labels = data_lib.load_arrays(config.data, 'test')
  x = tf.cast(images[:_EXAMPLES.value], tf.float32) / 255.0
  y = tf.constant(labels[:_EXAMPLES.value])
  served = lambda v: model(v, training=False)

  def at_training_temperature(v):
    with lwta.sampling_at_training_temperature():
      return model(v, training=False)

  paths = {
      'sample (test temperature 0.01)': served,
      'sample at the training temperature 0.67': at_training_temperature,
      'expected': surrogate.surrogate_logits_fn(served, 'expected'),
      'straight_through': surrogate.surrogate_logits_fn(served,
                                                        'straight_through'),
  }

  def right(v):
    """bool `[N]`: the decision (one of `mc_samples` passes) is right."""
    return np.concatenate([scoring.decide_repeated(
        served, v[s:s + 250], y[s:s + 250].numpy(), _PASSES.value, 1)[0][0]
                           for s in range(0, len(v), 250)])

  def cells(ok):
    numbers = scoring.summarize(ok[None], np.zeros(len(ok)), np.zeros(len(ok)))
    return f'{100 * numbers["accuracy"]:.1f} | {100 * numbers["image_se"]:.1f}'

  clean = right(x)
  n = len(clean)
  lines = [f'Model: {_RUN.value} ({config.model.name}, '
           f'{config.model.activation}); {n} Fashion-MNIST test images; '
           f'L-inf PGD eps={_EPS.value:g}, alpha={_ALPHA.value:g}, '
           f'{_STEPS.value} steps, random start, one pass per gradient (as '
           f'in training); decisions averaged over {_PASSES.value} passes.',
           '', '| gradient path | accuracy on the attacked images (%) | '
           'standard error |', '|---|---|---|',
           f'| none (clean images) | {cells(clean)} |']
  for name, fn in paths.items():
    adv = tf.concat([attacks.pgd(fn, x[s:s + 250], y[s:s + 250], _EPS.value,
                                 _ALPHA.value, _STEPS.value, seed=s)
                     for s in range(0, n, 250)], 0)
    lines.append(f'| {name} | {cells(right(adv) & clean)} |')
    print(lines[-1], flush=True)
  print('\n'.join(lines))


if __name__ == '__main__':
  flags.mark_flag_as_required('run')
  app.run(main)

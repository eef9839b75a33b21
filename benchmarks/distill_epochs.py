"""How long must the audit's distilled transfer source train?

The audit trains a small CNN on a model's own answers around the first
images (`evaluation.distill`) and runs APGD-CE on it as its transfer
attack. This measures, for several training lengths, the seconds, how
often the source agrees with the model's decisions, and what the transfer
leaves standing (APGD-CE, 50 steps, on the source; judged by the model's
decision rule), on the masking zoo's models (a seed CNN trained one epoch
and masked as in `benchmarks/masking_zoo.py`) and on any runs given.

  python benchmarks/distill_epochs.py --epochs=40,20,10
  python benchmarks/distill_epochs.py --models=quantized --runs=runs/pni
  python benchmarks/distill_epochs.py --pool=10000 --epochs=4  # the audit's

With --pool=N the source learns the model's answers on the distilled test
images and on the first N training images (no random copies: the audit's
`AuditConfig.distill_pool`); without, on the test images and 8 random
points of each one's eps ball.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

import masking_zoo  # pylint: disable=g-import-not-at-top
import tf_slwta  # pylint: disable=g-import-not-at-top
from tf_slwta import attacks  # pylint: disable=g-import-not-at-top
from tf_slwta import config as config_lib  # pylint: disable=g-import-not-at-top
from tf_slwta import data as data_lib  # pylint: disable=g-import-not-at-top
from tf_slwta.attacks import eot  # pylint: disable=g-import-not-at-top
from tf_slwta.evaluation import distill  # pylint: disable=g-import-not-at-top
from tf_slwta.evaluation import scoring  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--epochs', default='40,20,10')
  parser.add_argument('--models', default='plain,quantized,quantized+sat,'
                      'purified', help='masking zoo models ("" for none)')
  parser.add_argument('--runs', default='', help='run folders, comma '
                      'separated (their decisions average --mc_samples)')
  parser.add_argument('--mc_samples', type=int, default=10)
  parser.add_argument('--eps', type=float, default=0.1)
  parser.add_argument('--distill_examples', type=int, default=500)
  parser.add_argument('--examples', type=int, default=200)
  parser.add_argument('--pool', type=int, default=0,
                      help='training images labelled by the model (0: none)')
  args = parser.parse_args()
  info = config_lib.DataConfig(dataset='fashion_mnist')
  test_x, test_y = data_lib.load_arrays(info, 'test')
  models = {}
  wanted = [m for m in args.models.split(',') if m]
  train_x, train_y = data_lib.load_arrays(info, 'train')
  pool = (train_x[:args.pool].astype(np.float32) / 255.0 if args.pool
          else None)
  if wanted:
    zoo = masking_zoo.zoo(masking_zoo.train(0, train_x, train_y))
    models.update({name: (zoo[name][0], 1) for name in wanted})
  for path in (p for p in args.runs.split(',') if p):
    run = tf_slwta.load_run(path, mc_samples=args.mc_samples)
    models[path] = (lambda x, m=run.model: m(x, training=False),
                    args.mc_samples)
  distilled = test_x[:args.distill_examples].astype(np.float32) / 255.0
  x = tf.constant(test_x[:args.examples].astype(np.float32) / 255.0)
  y = test_y[:args.examples].astype(np.int64)
  print('| model | epochs | seconds | agreement | transfer leaves |\n'
        '|---|---|---|---|---|')
  for name, (fn, mc) in models.items():
    inputs, labels = distill.training_set(
        fn, distilled, args.eps, 'inf', mc_samples=mc,
        copies=0 if args.pool else 8, extra=pool)
    decisions = np.argmax(eot.compiled_mean_probabilities(fn, x, mc), -1)
    for epochs in (int(e) for e in args.epochs.split(',')):
      start = time.perf_counter()
      network = distill.distilled_network(inputs, labels, epochs)
      seconds = time.perf_counter() - start
      source = lambda z, n=network: n(z, training=False)
      agreement = np.mean(np.argmax(source(x).numpy(), -1) == decisions)
      adversarial = attacks.apgd(source, x, y, args.eps, norm='inf',
                                 steps=50)
      ok, _ = scoring.decide_repeated(fn, adversarial, y, mc, 1)
      print(f'| {name} | {epochs} | {seconds:.1f} | {agreement:.3f} | '
            f'{ok.mean():.1%} |', flush=True)


if __name__ == '__main__':
  main()

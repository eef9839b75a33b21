"""Square on a model that answers with noise: does the random search still
find the optimum?

The toy (issue 20's): a linear model on 8x8 one-channel images, 3 classes,
weights constant on 4x4 blocks (as real models' gradients are spatially
smooth), with Gaussian noise of s.d. 0.5 added to every logit on every
pass. Its decisions average the softmax over `--mc_samples` passes. The
best L-inf perturbation of each image is known in closed form (the corner
of the eps ball towards the nearest wrong class), so the best any attack
can do is that corner's accuracy under the noisy decision rule.

  python benchmarks/square_noisy_toy.py            # this checkout
  PYTHONPATH=OTHER python benchmarks/square_noisy_toy.py --old  # another

Prints the accuracy (20 fresh decisions per image, 200 images) left by the
optimum, by Square on the noisy model (one pass, and `--mc_samples`
passes, per estimate; or --estimates=1,5,10), and by Square searching
the noise-free mean (a
stand-in, as the gradient modes' surrogates), all judged by the noisy
decision rule.
"""

import argparse
import os
import sys

import numpy as np

if '--old' not in sys.argv:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tf_slwta import attacks  # pylint: disable=g-import-not-at-top
from tf_slwta.evaluation import scoring  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--old', action='store_true',
                      help='the checkout on PYTHONPATH (no score_fn)')
  parser.add_argument('--queries', type=int, default=2000)
  parser.add_argument('--mc_samples', type=int, default=4)
  parser.add_argument('--eps', type=float, default=0.016)
  parser.add_argument('--scale', type=float, default=32.0)
  parser.add_argument('--noise', type=float, default=0.5)
  parser.add_argument('--estimates', default='',
                      help='passes per margin estimate of the Square rows, '
                      'comma-separated (default 1 and --mc_samples; the '
                      'decisions always average --mc_samples)')
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  classes, side, n = 3, 8, 200
  blocks = rng.normal(size=(2, 2, classes)).astype(np.float32) / 4
  weights = np.repeat(np.repeat(blocks, 4, 0), 4, 1).reshape(
      side * side, classes) * args.scale
  x = rng.uniform(0.3, 0.7, size=(n, side, side, 1)).astype(np.float32)
  y = (x.reshape(n, -1) @ weights).argmax(1)
  w = tf.constant(weights)
  mean_fn = lambda v: tf.reshape(v, [tf.shape(v)[0], -1]) @ w
  noisy_fn = lambda v: mean_fn(v) + tf.random.normal(
      [tf.shape(v)[0], classes], stddev=args.noise)
  optimum = []
  for i in range(n):
    corners = []
    for j in range(classes):
      if j != y[i]:
        d = weights[:, y[i]] - weights[:, j]
        corner = np.clip(x[i].reshape(-1) - args.eps * np.sign(d), 0, 1)
        corners.append((corner @ d, corner))
    optimum.append(min(corners, key=lambda c: c[0])[1].reshape(side, side, 1))
  optimum = np.array(optimum, np.float32)

  def accuracy(images):
    ok, _ = scoring.decide_repeated(noisy_fn, images, y, args.mc_samples, 20)
    return 100 * ok.mean()

  rows = [('clean', accuracy(x)), ('optimum (closed form)', accuracy(optimum))]
  tf.random.set_seed(0)
  estimates = [int(k) for k in (args.estimates or
                                 f'1,{args.mc_samples}').split(',')]
  runs = [(f'Square, {k} pass{"es" if k > 1 else ""} per estimate',
           dict(mc_samples=k)) for k in estimates]
  for label, kwargs in runs + [('Square on the noise-free mean',
                                dict(score_fn=mean_fn))]:
    if args.old and 'score_fn' in kwargs:
      continue
    adv = attacks.square(noisy_fn, x, y, args.eps, queries=args.queries,
                         seed=0, **kwargs).numpy()
    rows.append((label, accuracy(adv)))
  print(f'| {n} images, {args.queries} queries | accuracy (%) |\n|---|---|')
  for label, value in rows:
    print(f'| {label} | {value:.1f} |')


if __name__ == '__main__':
  main()

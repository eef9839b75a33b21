"""How many queries a gradient from values alone needs on masked toys.

APGD-CE (one restart) whose gradient is `attacks.eot.finite_differences`
of the model (antithetic Gaussian directions; the model's own gradient
never enters), on the masking zoo of `tests/test_masking_zoo.py` (a small
CNN trained on synthetic data, 48 images, L-inf 0.03), judged by the
masked model's decision rule (10-pass decisions on the noisy toy, 3
repeats); BPDA (APGD-CE through the masked layer's identity, or the
noise-free gradient) for comparison. Sets the audit's escalation budget
(`evaluation.audit._DIFFERENCE_PAIRS`).

  python benchmarks/finite_differences_zoo.py
  python benchmarks/finite_differences_zoo.py --toys=shattered \\
      --settings=512:1:1,256:2:1

Each setting is pairs:sigma (in units of eps):tile.
"""

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, 'tests')]

import tensorflow as tf  # pylint: disable=g-import-not-at-top

import test_masking_zoo as zoo_lib  # pylint: disable=g-import-not-at-top
from attack_fixtures import sample_batch  # pylint: disable=g-import-not-at-top
from tf_slwta import attacks  # pylint: disable=g-import-not-at-top
from tf_slwta.evaluation import scoring  # pylint: disable=g-import-not-at-top


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--toys', default='shattered,noisy_liar')
  parser.add_argument('--settings', default=(
      '32:0.5:1,128:0.5:1,128:1:1,64:1:4,512:1:1,256:2:1'))
  parser.add_argument('--steps', type=int, default=50)
  args = parser.parse_args()
  x, y = sample_batch(128)
  x, y = tf.constant(x[:zoo_lib.IMAGES]), y[:zoo_lib.IMAGES]
  zoo = zoo_lib._zoo()  # pylint: disable=protected-access
  print('| toy | pairs | sigma / eps | tile | robust accuracy | seconds |')
  print('|---|---|---|---|---|---|')
  for name in args.toys.split(','):
    fn, bpda, _ = zoo[name]
    mc = 10 if name in zoo_lib._STOCHASTIC else 1  # pylint: disable=protected-access

    def judge(adv, fn=fn, mc=mc):
      ok, _ = scoring.decide_repeated(fn, adv, y, mc, 3)
      return ok.mean()

    for setting in args.settings.split(','):
      pairs, sigma, tile = setting.split(':')
      start = time.perf_counter()
      estimated = attacks.eot.finite_differences(
          fn, float(sigma) * zoo_lib.EPS, int(pairs), int(tile))
      adv = attacks.apgd(fn, x, y, zoo_lib.EPS, steps=args.steps, loss='ce',
                         mc_samples=mc, gradient_fn=estimated)
      print(f'| {name} | {pairs} | {sigma} | {tile} | {judge(adv):.1%} | '
            f'{time.perf_counter() - start:.0f} |', flush=True)
    if bpda is not None:
      adv = attacks.apgd(fn, x, y, zoo_lib.EPS, steps=args.steps, loss='ce',
                         eot_samples=mc, mc_samples=mc, gradient_fn=bpda)
      print(f'| {name} | BPDA | | | {judge(adv):.1%} | |', flush=True)


if __name__ == '__main__':
  main()

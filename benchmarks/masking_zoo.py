"""Can the audit be fooled? Deliberately masked models next to honest ones.

A seed CNN is trained on Fashion-MNIST (clean, one epoch), then wrapped in
ways that hide its gradients without making it any more robust:

  quantized       the input rounded to 1/4 steps (tf.round: no gradient)
  saturated       logits times 1000 (the softmax, and the cross-entropy's
                  gradient, round to exactly 0 or 1)
  purified        a 3x3 median filter behind stop_gradient
  shattered       x + 0.03 sin(1000 x) before the model (a wild gradient)
  quantized+sat   both of the first two
  noisy_liar      logit noise (s.d. 1) whose backward pass is random
and honest ones:
  plain           the model itself
  noisy           logit noise (s.d. 1), true gradients

Each is audited on the same test images (`evaluation.audit.run_audit`, the
settings of flags/attacks/audit_cpu.cfg cut to this CPU), without and with
a transfer source (the same architecture trained from another seed), next
to the strongest outside attack: APGD-CE/DLR through the layer the mask
hides (BPDA: the identity for rounding, filtering and the sine; the
model's own logits for saturation; the noise-free gradient for the liar),
Square with a large budget, and the per-image worst of those, all judged
by the masked model's decision rule.

  python benchmarks/masking_zoo.py --examples=200
  python benchmarks/masking_zoo.py --examples=200 --models=quantized,plain

Prints a table (and writes it to --output, JSON); run it with another
checkout's code on PYTHONPATH for the numbers before a change.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

if '--audit_only' not in sys.argv:  # Else the checkout on PYTHONPATH.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

import keras  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tf_slwta import attacks  # pylint: disable=g-import-not-at-top
from tf_slwta import config as config_lib  # pylint: disable=g-import-not-at-top
from tf_slwta import data as data_lib  # pylint: disable=g-import-not-at-top
from tf_slwta import models  # pylint: disable=g-import-not-at-top
from tf_slwta.evaluation import audit  # pylint: disable=g-import-not-at-top
from tf_slwta.evaluation import scoring  # pylint: disable=g-import-not-at-top


def train(seed, images, labels, epochs=1):
  """The seed CNN, clean training on the given arrays (uint8 images)."""
  keras.utils.set_random_seed(seed)
  model = models.build_model(config_lib.ModelConfig(),
                             data_lib.dataset_info('fashion_mnist'))
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(
                    from_logits=True))
  model.fit(images.astype(np.float32) / 255.0, labels, epochs=epochs,
            batch_size=128, verbose=0)
  return model


def median3(x):
  """3x3 median filter per channel, `[B, H, W, C]`."""
  patches = tf.image.extract_patches(
      tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode='SYMMETRIC'),
      [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], 'VALID')
  return tf.expand_dims(tf.sort(patches, axis=-1)[..., 4], -1)


@tf.custom_gradient
def lying_identity(x):
  """The identity whose backward pass is random noise of the same size."""
  def grad(upstream):
    return tf.random.normal(tf.shape(upstream)) * tf.norm(upstream)
  return tf.identity(x), grad


def zoo(base):
  """{name: (model's logits fn, BPDA logits fn for the outside attack)}."""
  plain = lambda x: base(x, training=False)
  noise = lambda x, s=1.0: tf.random.normal([tf.shape(x)[0], 10], stddev=s)
  quantize = lambda x: tf.round(x * 4) / 4
  bpda_quantize = lambda x: x + tf.stop_gradient(quantize(x) - x)
  return {
      'plain': (plain, plain),
      'noisy': (lambda x: plain(x) + noise(x), lambda x: plain(x) + noise(x)),
      'quantized': (lambda x: plain(quantize(x)),
                    lambda x: plain(bpda_quantize(x))),
      'saturated': (lambda x: 1000.0 * plain(x), plain),
      'quantized+sat': (lambda x: 1000.0 * plain(quantize(x)),
                        lambda x: plain(bpda_quantize(x))),
      'purified': (lambda x: plain(tf.stop_gradient(median3(x))),
                   lambda x: plain(x + tf.stop_gradient(median3(x) - x))),
      'shattered': (lambda x: plain(x + 0.03 * tf.sin(1000.0 * x)),
                    lambda x: plain(x + tf.stop_gradient(
                        0.03 * tf.sin(1000.0 * x)))),
      'noisy_liar': (lambda x: lying_identity(plain(x)) + noise(x),
                     lambda x: plain(x) + noise(x)),
  }


def outside(fn, bpda, x, y, cfg, queries):
  """The strongest outside attack: per image the worst (by 5 fresh
  decisions of 10 passes) of APGD-CE/DLR through `bpda` (3 restarts, EOT 10
  on a noisy model) and Square with `queries`; its `scoring.summarize`
  numbers ('accuracy', 'mc_se', 'image_se')."""
  noisy = attacks.eot.mean_probabilities(fn, x[:8], 1).numpy()
  stochastic = not np.array_equal(noisy, attacks.eot.mean_probabilities(
      fn, x[:8], 1).numpy())
  mc = 10 if stochastic else 1
  eot = 10 if stochastic else 1
  candidates = [x]
  for loss in ('ce', 'dlr'):
    candidates.append(attacks.apgd(fn, x, y, cfg.aa_eps, steps=100, loss=loss,
                                   restarts=3, eot_samples=eot, mc_samples=mc,
                                   gradient_fn=bpda).numpy())
  candidates.append(attacks.square(fn, x, y, cfg.aa_eps, queries=queries,
                                   mc_samples=mc).numpy())
  repeats = 5 if stochastic else 1
  pool = scoring.Candidates([], [], [])
  for c in candidates:
    pool.add(c, *scoring.decide_repeated(fn, c, y, mc, repeats))
  chosen, _, _ = pool.worst(y)
  ok, _ = scoring.decide_repeated(fn, chosen, y, mc, repeats)
  unused = np.zeros(len(y))  # Norms: not reported here.
  return scoring.summarize(ok, unused, unused)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--examples', type=int, default=200)
  parser.add_argument('--eps', type=float, default=0.1)
  parser.add_argument('--models', default='')
  parser.add_argument('--square_queries', type=int, default=300)
  parser.add_argument('--outside_queries', type=int, default=3000)
  parser.add_argument('--output', default='runs/masking_zoo.json')
  parser.add_argument('--no_transfer', action='store_true')
  parser.add_argument('--audit_only', action='store_true',
                      help='skip the outside attacks (e.g. for the numbers '
                      'of an older checkout, on PYTHONPATH)')
  args = parser.parse_args()
  info = config_lib.DataConfig(dataset='fashion_mnist')
  train_x, train_y = data_lib.load_arrays(info, 'train')
  test_x, test_y = data_lib.load_arrays(info, 'test')
  images, labels = test_x[:args.examples], test_y[:args.examples]
  base = train(0, train_x, train_y)
  source = train(1, train_x, train_y)
  source_fn = lambda x: source(x, training=False)
  cfg = config_lib.AttackConfig(
      attacks=('apgd_ce', 'apgd_dlr', 'square'), aa_eps=args.eps,
      apgd_steps=50, eot_samples=5, mc_samples=10, decision_repeats=5,
      square_queries=args.square_queries, gradient_modes=('auto',))
  checks = config_lib.AuditConfig(sweep_examples=min(100, args.examples),
                                  sweep_steps=(10, 25, 50),
                                  eps_multiples=(0.5, 1, 2, 4, 8, 16))
  wanted = [m for m in args.models.split(',') if m]
  results = []
  x = images.astype(np.float32) / 255.0
  for name, (fn, bpda) in zoo(base).items():
    if wanted and name not in wanted:
      continue
    row = {'model': name}
    for transfer in ([None] if args.no_transfer else [None, source_fn]):
      start = time.perf_counter()
      result = audit.run_audit(fn, images, labels, cfg, checks,
                               batch_size=args.examples, verbose=False,
                               transfer_logits_fn=transfer,
                               distill_pool=train_x[:checks.distill_pool])
      worst = result.get('worst_case') or next(
          r for r in result['rows'] if r['attack'] == 'combined')
      key = 'with_transfer' if transfer else 'audit'
      row[key] = worst['accuracy']
      row[f'{key}_mc_se'] = worst.get('mc_se', 0.0)
      row[f'{key}_failed'] = result['failed']
      row[f'{key}_seconds'] = round(time.perf_counter() - start, 1)
    if not args.audit_only:
      numbers = outside(fn, bpda, x, labels, cfg, args.outside_queries)
      row['outside'] = numbers['accuracy']
      row['outside_mc_se'] = numbers['mc_se']
    results.append(row)
    print(json.dumps(row), flush=True)
  print('\n| model | audit (% ± MC s.e.) | with transfer | outside | failed '
        'checks |\n|---|---|---|---|---|')
  for r in results:
    cell = lambda key: (f'{100 * r.get(key, float("nan")):.1f} ± '
                        f'{100 * r.get(key + "_mc_se", float("nan")):.1f}')
    print(f'| {r["model"]} | {cell("audit")} | {cell("with_transfer")} | '
          f'{cell("outside")} | {", ".join(r["audit_failed"]) or "none"} |')
  os.makedirs(os.path.dirname(args.output) or '.', exist_ok=True)
  with open(args.output, 'w') as f:
    json.dump(results, f, indent=2)


if __name__ == '__main__':
  main()

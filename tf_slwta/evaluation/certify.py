"""Randomized smoothing (Cohen, Rosenfeld & Kolter, ICML 2019).

The smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c) is
certified robust at x within L2 radius sigma * Phi^-1(pA) when the top class
has probability pA > 1/2. Both procedures of the paper:

  PREDICT: n noisy samples; return the top class unless a two-sided binomial
    test cannot tell it from the runner-up at level alpha (then abstain).
  CERTIFY: n0 samples choose the class cA; n more samples count it; the
    one-sided Clopper-Pearson lower bound pA_lower at level alpha gives
    radius sigma * Phi^-1(pA_lower), or an abstention if pA_lower < 1/2.

Abstentions are returned as class -1. Statistics use TensorFlow Probability
(the regularized incomplete beta function, its inverse, and Normal quantiles).
"""

import dataclasses
import os
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tf_slwta import config as config_lib
from tf_slwta import progress as progress_lib
from tf_slwta import run_folder

ABSTAIN = -1


def sample_counts(logits_fn, image: np.ndarray, num: int, sigma: float,
                  batch_size: int, num_classes: int,
                  generator: tf.random.Generator) -> np.ndarray:
  """Class votes of `num` noisy copies of one image.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    image: float32 `[H, W, C]` in [0, 1] (noise is not clipped, as in the
      paper, so the certificate holds for the model as it is).
    num: noisy samples.
    sigma: noise std.
    batch_size: copies per forward pass.
    num_classes: K.
    generator: the noise source; one stateful generator for a whole
      certification keeps every draw independent (op-seeded noise would
      restart the same stream in each new trace, making CERTIFY's selection
      and estimation samples overlap).

  Returns:
    int64 `[K]` counts summing to `num`.
  """
  counts = np.zeros(num_classes, np.int64)
  remaining = num
  while remaining > 0:
    b = min(batch_size, remaining)
    counts += _votes(logits_fn, tf.constant(image), b, sigma, num_classes,
                     generator).numpy()
    remaining -= b
  return counts


@tf.function(reduce_retracing=True)
def _votes(logits_fn, image, b, sigma, num_classes, generator):
  batch = tf.repeat(image[None], b, axis=0)
  noisy = batch + generator.normal(tf.shape(batch), stddev=sigma)
  predictions = tf.argmax(logits_fn(noisy), axis=-1)
  return tf.math.bincount(predictions, minlength=num_classes,
                          maxlength=num_classes, dtype=tf.int64)


def check_independent_votes(shared_layers, batch_size: int) -> None:
  """Refuses votes that would not be independent draws.

  CERTIFY's bound assumes every vote is an independent draw of the noisy
  classifier. A layer that draws one noise for a whole batch of copies
  (PNI kernels, `layers.noise.batch_shared_layers`) makes the votes of one
  batch move together: the Clopper-Pearson bound would then be far too
  tight and could certify the wrong class.

  Args:
    shared_layers: the model's batch-shared noise layers (names or layers).
    batch_size: noisy copies per forward pass.

  Raises:
    ValueError: shared layers and batch_size > 1; the message gives the fix.
  """
  if shared_layers and batch_size > 1:
    names = ', '.join(getattr(l, 'name', str(l)) for l in shared_layers)
    raise ValueError(
        f'Randomized smoothing needs independent votes, but {names} draw one '
        f'noise for a whole batch of copies, so votes in a batch of '
        f'{batch_size} are not independent and the certificate would be '
        f'invalid. Pass --certify_batch_size=1 (each copy its own draw; '
        f'slower) or --nopni_at_test (certify the noise-free model).')


def binomial_p_value(count_a: int, count_b: int) -> float:
  """Two-sided p-value of `count_a` successes in `count_a + count_b` at p = 1/2."""
  n = count_a + count_b
  k = max(count_a, count_b)
  if n == 0:
    return 1.0
  # P(X >= k) for X ~ Binomial(n, 1/2) is the regularized I_{1/2}(k, n-k+1).
  tail = float(tf.math.betainc(float(k), float(n - k + 1), 0.5))
  return min(1.0, 2.0 * tail)


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
  """One-sided (1 - alpha) Clopper-Pearson lower bound of a binomial p."""
  if successes == 0:
    return 0.0
  return float(tfp.math.betaincinv(float(successes),
                                   float(trials - successes + 1), alpha))


def predict(logits_fn, image: np.ndarray, cfg: config_lib.CertifyConfig,
            num_classes: int, generator: tf.random.Generator) -> int:
  """PREDICT: the smoothed class, or `ABSTAIN` when the vote is not clear."""
  counts = sample_counts(logits_fn, image, cfg.n, cfg.sigma, cfg.batch_size,
                         num_classes, generator)
  top2 = np.argsort(counts)[::-1][:2]
  if binomial_p_value(int(counts[top2[0]]), int(counts[top2[1]])) > cfg.alpha:
    return ABSTAIN
  return int(top2[0])


def certify(logits_fn, image: np.ndarray, cfg: config_lib.CertifyConfig,
            num_classes: int, generator: tf.random.Generator
            ) -> Tuple[int, float]:
  """CERTIFY: (class or `ABSTAIN`, certified L2 radius >= 0)."""
  selection = sample_counts(logits_fn, image, cfg.n0, cfg.sigma,
                            cfg.batch_size, num_classes, generator)
  top = int(np.argmax(selection))
  counts = sample_counts(logits_fn, image, cfg.n, cfg.sigma, cfg.batch_size,
                         num_classes, generator)
  p_lower = clopper_pearson_lower(int(counts[top]), cfg.n, cfg.alpha)
  if p_lower < 0.5:
    return ABSTAIN, 0.0
  radius = cfg.sigma * float(tfp.distributions.Normal(0.0, 1.0).quantile(p_lower))
  return top, radius


def certify_dataset(logits_fn, images: np.ndarray, labels: np.ndarray,
                    cfg: config_lib.CertifyConfig, num_classes: int,
                    verbose: bool = True, seed: int = 0) -> Dict[str, object]:
  """Runs PREDICT and CERTIFY on every image and tabulates the results.

  Args:
    logits_fn: images -> logits of the base classifier.
    images: uint8 `[N, H, W, C]`.
    labels: int `[N]`.
    cfg: smoothing settings.
    num_classes: K.
    verbose: show a progress bar with an ETA.
    seed: seed of the noise generator (the run is repeatable).

  Returns:
    {'certified_accuracy': {radius: share in [0, 1] of images certified
     correct at that radius}, 'predict_accuracy', 'predict_abstain_rate',
     'certify_abstain_rate', 'examples', 'per_example': [...]}.
  """
  rows: List[Dict[str, object]] = []
  generator = tf.random.Generator.from_seed(seed)
  progress = progress_lib.Progress('certify', len(images), enabled=verbose,
                                   unit='image')
  progress.start(f'PREDICT and CERTIFY, {cfg.n0} + 2 x {cfg.n} noisy copies '
                 f'per image')
  for uint8_image, label in zip(images, labels):
    image = uint8_image.astype(np.float32) / 255.0
    predicted = predict(logits_fn, image, cfg, num_classes, generator)
    certified, radius = certify(logits_fn, image, cfg, num_classes, generator)
    rows.append({'label': int(label), 'predict': predicted,
                 'certify': certified, 'radius': radius})
    progress.advance()
  progress.close()
  n = len(rows)
  correct = lambda r, radius: r['certify'] == r['label'] and r['radius'] >= radius
  return {
      'certified_accuracy': {
          str(radius): sum(correct(r, radius) for r in rows) / n
          for radius in cfg.radii},
      'predict_accuracy': sum(r['predict'] == r['label'] for r in rows) / n,
      'predict_abstain_rate': sum(r['predict'] == ABSTAIN for r in rows) / n,
      'certify_abstain_rate': sum(r['certify'] == ABSTAIN for r in rows) / n,
      'examples': n,
      'settings': dataclasses.asdict(cfg),
      'per_example': rows,
  }


def markdown_table(result: Dict[str, object]) -> str:
  """Certified accuracy per radius as a Markdown table."""
  lines = ['| L2 radius | certified accuracy (%) |', '|---|---|']
  for radius, value in result['certified_accuracy'].items():
    lines.append(f'| {radius} | {100 * value:.2f} |')
  lines.append('')
  lines.append(f'PREDICT accuracy {100 * result["predict_accuracy"]:.2f}%, '
               f'abstains {100 * result["predict_abstain_rate"]:.2f}%; '
               f'CERTIFY abstains {100 * result["certify_abstain_rate"]:.2f}% '
               f'({result["examples"]} images, sigma '
               f'{result["settings"]["sigma"]}, n0 {result["settings"]["n0"]}, '
               f'n {result["settings"]["n"]}, alpha '
               f'{result["settings"]["alpha"]}).')
  return '\n'.join(lines) + '\n'


def write_report(result: Dict[str, object], output_dir: str) -> Dict[str, str]:
  """Writes certify.md and certify.json under `output_dir`; returns the paths."""
  tf.io.gfile.makedirs(output_dir)
  paths = {'md': os.path.join(output_dir, 'certify.md'),
           'json': os.path.join(output_dir, 'certify.json')}
  run_folder.atomic_write(paths['md'], markdown_table(result))
  run_folder.write_json(paths['json'], result)
  return paths

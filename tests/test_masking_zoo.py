"""Can the audit be fooled? A zoo of deliberately masked toys, and honest ones.

Each masked toy hides the gradients of the same small trained CNN without
making it any more robust. Where the gradients are
exactly 0 (quantized, saturated, purified) the `gradients` check must fail;
wherever the mask fools the table's attacks (its number more than a few
points above what an attacker who knows the mask gets: BPDA, APGD through
the masked layer's identity or the model's own logits, judged by the masked
model), some masking check must fail and the audit escalate; and the
audit's final number must land within those few points of BPDA's (the
lying toy, `_DETECTION_ONLY`: seen and called an upper bound). On the
honest toys, no check may fail.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from attack_fixtures import sample_batch, trained_model
from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta.evaluation import audit
from tf_slwta.evaluation import scoring

EPS = 0.03
IMAGES = 48
# One image of 48 is 2.1 points; "within a few points" is 3 images.
CLOSE = 3 / IMAGES


def _median3(x):
  patches = tf.image.extract_patches(
      tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode='SYMMETRIC'),
      [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], 'VALID')
  return tf.expand_dims(tf.sort(patches, axis=-1)[..., 4], -1)


@tf.custom_gradient
def _lying_identity(x):
  def grad(upstream):
    return tf.random.normal(tf.shape(upstream)) * tf.norm(upstream)
  return tf.identity(x), grad


def _zoo():
  """{name: (model, BPDA stand-in for the reference attack, checks of
  which at least one must fail (empty: honest, none may fail))}."""
  model = trained_model()
  plain = lambda x: model(x, training=False)
  noise = lambda x: tf.random.normal([tf.shape(x)[0], 10], stddev=0.5)
  quantize = lambda x: tf.round(x * 4) / 4
  through = lambda layer: lambda x: plain(x + tf.stop_gradient(layer(x) - x))
  return {
      'quantized': (lambda x: plain(quantize(x)), through(quantize),
                    {'gradients'}),
      'saturated': (lambda x: 1000.0 * plain(x), plain, {'gradients'}),
      'purified': (lambda x: plain(tf.stop_gradient(_median3(x))),
                   through(_median3), {'gradients'}),
      'shattered': (lambda x: plain(x + 0.03 * tf.sin(1000.0 * x)),
                    through(lambda x: x + 0.03 * tf.sin(1000.0 * x)),
                    set(audit.MASKING_CHECKS)),
      'noisy_liar': (lambda x: _lying_identity(plain(x)) + noise(x),
                     lambda x: plain(x) + noise(x), set(audit.MASKING_CHECKS)),
      'plain': (plain, None, set()),
      'noisy': (lambda x: plain(x) + noise(x), None, set()),
  }


_STOCHASTIC = ('noisy_liar', 'noisy')
# Masks the audit sees (a check fails) but whose escalated number is still
# more than a few points above BPDA's. Here only the detection is checked
# (no escalation: it cost 2 of this module's minutes for an expected
# failure); the gap is measured by `python benchmarks/masking_zoo.py
# --models=noisy_liar` (the liar 49.3% / 41.7% / 35.4% after 1 / 2 / 3
# rounds vs 0%; with APGD on finite differences 27.8-45.1% after one
# round). The shattered toy left this list when finite differences joined
# the escalation (14.6% -> within 3/48).
_DETECTION_ONLY = ('noisy_liar',)


def _settings(stochastic, escalate=True):
  attack = config_lib.AttackConfig(
      attacks=('apgd_ce', 'square'), aa_eps=EPS, apgd_steps=20,
      square_queries=200, eot_samples=4 if stochastic else 1,
      mc_samples=10 if stochastic else 1, decision_repeats=3)
  checks = config_lib.AuditConfig(
      sweep_examples=IMAGES, sweep_steps=(5, 20), eps_multiples=(1, 4, 16),
      noise_draws=3, escalation_rounds=2, escalation_queries=1000,
      escalate=escalate)
  return attack, checks


def _reference(fn, bpda, x, y, stochastic):
  """APGD-CE and -DLR through the stand-in (2 restarts, EOT over 10 passes
  on a noisy toy), per image the worst, judged by the masked model."""
  mc = 10 if stochastic else 1
  repeats = 3 if stochastic else 1
  pool = scoring.Candidates([], [], [])
  for candidate in [x] + [
      attacks.apgd(fn, x, y, EPS, steps=50, loss=loss, restarts=2,
                   eot_samples=mc, mc_samples=mc, gradient_fn=bpda).numpy()
      for loss in ('ce', 'dlr')]:
    pool.add(candidate, *scoring.decide_repeated(fn, candidate, y, mc,
                                                 repeats))
  chosen, _, _ = pool.worst(y)
  ok, _ = scoring.decide_repeated(fn, chosen, y, mc, repeats)
  return float(ok.mean())


# The toys whose gradients are exactly 0 are checked in
# test_masking_zoo_zero_gradients.py, so that the two halves of the zoo run
# on two test processes at once.
ZERO_GRADIENT_TOYS = ('quantized', 'saturated', 'purified')


@functools.lru_cache(maxsize=1)
def _batch():
  x, y = sample_batch(128)
  return x[:IMAGES], y[:IMAGES]


@pytest.mark.parametrize('name', [n for n in _zoo()
                                  if n not in ZERO_GRADIENT_TOYS])
def test_the_audit_sees_each_mask_and_escalates_to_the_real_number(name):
  check_toy(name)


def check_toy(name):
  """Audits toy `name` and holds its verdicts and number to the rules of
  the module docstring."""
  tf.random.set_seed(7)
  fn, bpda, expected = _zoo()[name]
  x, y = _batch()
  images = np.round(x * 255).astype(np.uint8)
  stochastic = name in _STOCHASTIC
  result = audit.run_audit(fn, images, y,
                           *_settings(stochastic,
                                      name not in _DETECTION_ONLY),
                           batch_size=IMAGES, verbose=False)
  statuses = {c['name']: c['status'] for c in result['checks']}
  if not expected:  # Honest: nothing fails, nothing is escalated.
    # Except, on the noisy toy, perhaps monte_carlo: with 48 images and 3
    # decisions a worst case near 3% carries a Monte Carlo s.e. near its
    # 1-point bar (one image's decision is 2.1 points), whichever way the
    # model's noise falls; that says "too few images", not "masked".
    assert [f for f in result['failed'] if f != 'monte_carlo'] == [], (
        result['checks'])
    assert not result['upper_bound'] and not result['escalation']
    return
  failed = set(result['failed'])
  if name in _DETECTION_ONLY:
    # Seen, and the number is called an upper bound, not the result.
    assert failed & set(audit.MASKING_CHECKS), (name, statuses)
    assert result['upper_bound'] and not result['escalation']
    assert any('upper bound' in n for n in result['notes']), result['notes']
    return
  reference = _reference(fn, bpda, tf.constant(x), y, stochastic)
  table = next(r for r in result['rows'] if r['attack'] == 'combined')
  worst = result['worst_case']
  if expected != set(audit.MASKING_CHECKS):
    # Gradients that are exactly 0: the direct evidence must say so.
    assert failed & expected, (name, statuses)
  if table['accuracy'] > reference + CLOSE:
    # The mask fooled the table's attacks: some check must see it ...
    assert failed & set(audit.MASKING_CHECKS), (
        name, table['accuracy'], reference, statuses)
  if failed & set(audit.MASKING_CHECKS):
    # ... and the audit goes on, and says its number is an upper bound.
    assert result['upper_bound'] and result['escalation']
    assert worst['attack'] == 'escalated'
    assert worst['accuracy'] <= table['accuracy']
  # Either way the audit's number is at most a few points above BPDA's.
  assert worst['accuracy'] <= reference + CLOSE, (
      name, worst['accuracy'], table['accuracy'], reference,
      result['escalation'], statuses)

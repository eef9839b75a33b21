"""Attacks on stochastic models, and the gradient-masking audit."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from attack_fixtures import accuracy, logits_fn, sample_batch
from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta.attacks import common
from tf_slwta.evaluation import audit
from tf_slwta.evaluation import report


def _noisy_model(stddev):
  base = logits_fn()
  return lambda x: base(x) + tf.random.normal([tf.shape(x)[0], 10],
                                              stddev=stddev)


def _pgd_stopping_at_first_noisy_success(fn, x, y, eps, alpha, steps):
  """PGD as it was: an example froze once one noisy pass misclassified it."""
  adv = tf.clip_by_value(x + tf.random.uniform(x.shape, -eps, eps), 0.0, 1.0)
  done = tf.zeros(len(y), tf.bool)
  y = tf.constant(y, tf.int64)
  for _ in range(steps):
    grad, probs, _ = attacks.eot.loss_gradient(
        fn, lambda logits: common.cross_entropy(y, logits), adv)
    done = done | (tf.argmax(probs, -1) != y)
    moved = tf.clip_by_value(
        x + tf.clip_by_value(adv + alpha * tf.sign(grad) - x, -eps, eps),
        0.0, 1.0)
    adv = tf.where(done[:, None, None, None], adv, moved)
  return adv


def test_pgd_keeps_attacking_after_a_noisy_success():
  # Logit noise of std 3 makes a single pass wrong now and then, even on a
  # clean image; the 20-pass decision is steady. Frozen at such a lucky
  # pass, the old attack left most images where the decision is still
  # right; the attack now keeps pushing and breaks them.
  fn = _noisy_model(3.0)
  x, y = sample_batch(128)
  eps, alpha, steps = 0.03, 0.005, 20
  tf.random.set_seed(0)
  old = _pgd_stopping_at_first_noisy_success(fn, x, y, eps, alpha, steps)
  new = attacks.pgd(fn, x, y, eps, alpha, steps)
  old_accuracy = accuracy(fn, old, y, mc_samples=20)
  new_accuracy = accuracy(fn, new, y, mc_samples=20)
  assert accuracy(fn, x, y, mc_samples=20) > 0.95
  assert old_accuracy > 0.4
  assert new_accuracy < old_accuracy - 0.25


def test_cw_keeps_only_successes_the_decision_confirms():
  # CW returns the smallest perturbation that succeeded. Confirmed by one
  # noisy pass, as it was, about half of those images are right again at
  # the next 20-pass decision; confirmed by a 20-pass decision, most hold.
  fn = _noisy_model(3.0)
  x, y = sample_batch(64)

  def holding(mc_samples):
    adv = attacks.carlini_wagner_l2(fn, x, y, c=1.0, kappa=2.0, steps=60,
                                    binary_search_steps=3, learning_rate=0.05,
                                    mc_samples=mc_samples)
    moved = ~np.all(adv.numpy() == x, axis=(1, 2, 3))
    assert moved.mean() > 0.5
    return (attacks.predict(fn, adv, 20).numpy() != y)[moved].mean()

  confirmed, one_pass = holding(20), holding(1)
  assert confirmed > 0.65 and confirmed > one_pass + 0.15


def _audit_settings():
  attack = config_lib.AttackConfig(
      attacks=('apgd_ce', 'apgd_t', 'square'), aa_eps=0.03, apgd_steps=20,
      apgd_target_classes=3, square_queries=300)
  checks = config_lib.AuditConfig(sweep_examples=64, sweep_steps=(5, 10, 20),
                                  noise_draws=5)
  return attack, checks


@pytest.fixture(scope='module')
def uint8_batch():
  x, y = sample_batch(128)
  return np.round(x * 255).astype(np.uint8), y


def test_audit_passes_a_sound_model(uint8_batch):
  images, labels = uint8_batch
  result = audit.run_audit(logits_fn(), images, labels, *_audit_settings(),
                           batch_size=64, verbose=False)
  assert result['failed'] == [], result['checks']
  names = {c['name'] for c in result['checks']}
  assert {'eps_to_zero', 'eps_monotone', 'steps_monotone', 'single_step',
          'gradient_free', 'noise_floor', 'monte_carlo'} <= names
  by_name = {r['attack']: r for r in result['rows']}
  # The table's worst case is the strongest number found.
  assert by_name['combined']['accuracy'] == min(
      r['accuracy'] for r in result['rows'])
  assert not result['stochastic']


def test_audit_flags_a_model_whose_gradients_are_masked(uint8_batch):
  # Input quantization with no gradient (tf.round): every gradient attack
  # sees zeros. Square does not need gradients, so it breaks the model.
  base = logits_fn()
  masked = lambda x: base(tf.round(x * 4) / 4)
  images, labels = uint8_batch
  result = audit.run_audit(masked, images, labels, *_audit_settings(),
                           batch_size=64, verbose=False)
  assert {'eps_to_zero', 'gradient_free'} <= set(result['failed'])
  by_name = {r['attack']: r for r in result['rows']}
  assert by_name['apgd_ce']['accuracy'] > 0.9
  assert by_name['combined']['accuracy'] <= by_name['square']['accuracy']
  text = audit.markdown(result)
  assert text.index('FAILED') < text.index('passed')


def test_audit_of_a_stochastic_model_runs_every_mode_with_error_bars(
    uint8_batch):
  images, labels = uint8_batch
  attack, checks = _audit_settings()
  attack = dataclasses.replace(attack, mc_samples=5, decision_repeats=4)
  result = audit.run_audit(_noisy_model(3.0), images[:64], labels[:64],
                           attack, checks, batch_size=64, verbose=False)
  assert result['stochastic']
  names = [r['attack'] for r in result['rows']]
  for mode in ('sample', 'expected', 'straight_through'):
    assert f'apgd_ce/{mode}' in names and f'single_step/{mode}' in names
  assert 'gradient_modes' in {c['name'] for c in result['checks']}
  combined = next(r for r in result['rows'] if r['attack'] == 'combined')
  assert combined['repeats'] == 4 and combined['mc_se'] > 0
  assert result['outcomes']['combined'].shape == (4, 64)


def test_report_puts_failed_checks_on_top(tmp_path):
  result = {'checks': [{'name': 'eps_to_zero', 'passed': False,
                        'detail': 'APGD-CE at eps=0.8 leaves 90.0%'},
                       {'name': 'single_step', 'passed': True,
                        'detail': 'fine'}],
            'eps_sweep': [{'eps': 0.8, 'accuracy': 0.9}],
            'steps_sweep': [{'steps': 10, 'accuracy': 0.9}],
            'examples': 10, 'sweep_examples': 10, 'sweep_mode': 'sample',
            'checkpoint': 'ckpt-1', 'rows': []}
  with open(os.path.join(tmp_path, 'audit.json'), 'w') as f:
    json.dump(result, f)
  cfg = config_lib.ExperimentConfig(output_dir=str(tmp_path))
  page = open(report.write_report(cfg, tensorboard=False)).read()
  assert page.index('1 of 2 gradient-masking checks failed') < page.index(
      'Settings') if 'Settings' in page else True
  assert 'APGD-CE at eps=0.8 leaves 90.0%' in page
  assert page.index('class="warning"') < page.index('Gradient-masking audit')

"""Attacks: budgets, clipping, strength, targeting, CW margins, EOT, inputs."""

import numpy as np
import pytest
import tensorflow as tf

from attack_fixtures import accuracy, logits_fn, sample_batch
from tf_slwta import attacks
from tf_slwta.attacks import cw as cw_lib


@pytest.fixture(scope='module')
def fn():
  return logits_fn()


@pytest.fixture(scope='module')
def batch():
  return sample_batch()


def test_model_is_trained(fn, batch):
  assert accuracy(fn, *batch) > 0.95


@pytest.mark.parametrize('norm,eps', [('inf', 0.05), (2, 0.8)])
def test_fgsm_and_pgd_stay_in_the_ball_and_the_range(fn, batch, norm, eps):
  x, y = batch
  for adv in (attacks.fgsm(fn, x, y, eps, norm=norm),
              attacks.pgd(fn, x, y, eps, eps / 4, 10, norm=norm, restarts=2)):
    delta = adv.numpy() - x
    if norm == 'inf':
      assert np.abs(delta).max() <= eps + 1e-5
    else:
      assert np.linalg.norm(delta.reshape(len(x), -1), axis=1).max() <= eps + 1e-5
    assert adv.numpy().min() >= 0.0 and adv.numpy().max() <= 1.0


def test_eps_zero_returns_the_input(fn, batch):
  x, y = batch
  np.testing.assert_array_equal(attacks.fgsm(fn, x, y, 0.0), x)
  np.testing.assert_array_equal(attacks.pgd(fn, x, y, 0.0, 0.01, 5), x)
  np.testing.assert_array_equal(attacks.pgd(fn, x, y, 0.0, 0.01, 5, norm=2), x)


def test_fgsm_moves_every_pixel_by_exactly_eps_where_not_clipped(fn, batch):
  x, y = batch
  eps = 0.05
  adv = attacks.fgsm(fn, x, y, eps).numpy()
  xt = tf.constant(x)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=y, logits=fn(xt)))
  grad = tape.gradient(loss, xt).numpy()
  free = (grad != 0) & (x + eps * np.sign(grad) >= 0) & (x + eps * np.sign(grad) <= 1)
  assert free.mean() > 0.5
  np.testing.assert_allclose(np.abs(adv - x)[free], eps, atol=1e-6)
  np.testing.assert_allclose(adv[free], (x + eps * np.sign(grad))[free], atol=1e-6)


def test_fgsm_l2_has_exactly_eps_norm_when_unclipped(fn, batch):
  x, y = batch
  x = 0.25 + 0.5 * x  # Far from the range ends: nothing gets clipped.
  adv = attacks.fgsm(fn, x, y, 0.5, norm=2).numpy()
  norms = np.linalg.norm((adv - x).reshape(len(x), -1), axis=1)
  np.testing.assert_allclose(norms, 0.5, rtol=1e-4)


def test_more_pgd_steps_or_restarts_never_raise_robust_accuracy(fn, batch):
  x, y = batch
  eps = 0.03
  by_steps = [accuracy(fn, attacks.pgd(fn, x, y, eps, eps / 4, steps), y)
              for steps in (1, 3, 10, 20)]
  assert by_steps == sorted(by_steps, reverse=True)
  assert by_steps[-1] < by_steps[0]
  by_restarts = [accuracy(fn, attacks.pgd(fn, x, y, eps, eps / 4, 3,
                                          restarts=r), y) for r in (1, 2, 4)]
  assert by_restarts == sorted(by_restarts, reverse=True)


def test_large_eps_breaks_every_example(fn, batch):
  x, y = batch
  assert accuracy(fn, attacks.pgd(fn, x, y, 0.3, 0.05, 20), y) == 0.0
  assert accuracy(fn, attacks.pgd(fn, x, y, 5.0, 0.5, 20, norm=2), y) == 0.0


def test_targeted_pgd_reaches_the_target(fn, batch):
  x, y = batch
  target = (y + 1) % 10
  adv = attacks.pgd(fn, x, target, 0.3, 0.02, 40, targeted=True)
  hit = attacks.predict(fn, adv).numpy() == target
  assert hit.mean() >= 0.9


def test_targeted_cw_reaches_the_target(fn, batch):
  x, y = batch
  target = (y + 3) % 10
  adv = attacks.carlini_wagner_l2(fn, x, target, c=1.0, steps=100,
                                  binary_search_steps=4, learning_rate=0.05,
                                  targeted=True)
  hit = attacks.predict(fn, adv).numpy() == target
  assert hit.mean() >= 0.9


def test_cw_final_margin_is_about_kappa(fn, batch):
  x, y = batch
  kappa = 0.5
  adv = attacks.carlini_wagner_l2(fn, x, y, c=1.0, kappa=kappa, steps=150,
                                  binary_search_steps=5, learning_rate=0.05)
  margins = cw_lib.margin(fn(adv), tf.constant(y), targeted=False).numpy()
  success = ~np.all(adv.numpy() == x, axis=(1, 2, 3))
  assert success.mean() >= 0.9
  # Every success clears the margin; the smallest perturbation barely does.
  assert np.all(margins[success] <= -kappa + 1e-3)
  assert np.median(margins[success]) >= -kappa - 0.15


def test_cw_returns_the_original_where_it_fails(fn, batch):
  x, y = batch
  adv = attacks.carlini_wagner_l2(fn, x, y, c=1e-4, kappa=0.0, steps=3,
                                  binary_search_steps=1).numpy()
  unchanged = np.all(adv == x, axis=(1, 2, 3))
  fooled = attacks.predict(fn, adv).numpy() != y
  assert unchanged.any()
  assert not fooled[unchanged].any()
  assert np.all(fooled[~unchanged])  # Only successes are returned.


def test_cw_finds_smaller_perturbations_than_pgd_l2(fn, batch):
  x, y = batch
  adv = attacks.carlini_wagner_l2(fn, x, y, c=0.1, steps=100,
                                  binary_search_steps=5, learning_rate=0.05)
  l2 = np.linalg.norm((adv.numpy() - x).reshape(len(x), -1), axis=1)
  assert np.all(np.isfinite(l2))
  fooled = attacks.predict(fn, adv).numpy() != y
  assert fooled.mean() >= 0.9
  # PGD L2 with half CW's median distance as its budget fools fewer.
  eps = np.median(l2[fooled]) * 0.5
  pgd_adv = attacks.pgd(fn, x, y, eps, eps / 5, 30, norm=2)
  assert np.mean(attacks.predict(fn, pgd_adv).numpy() != y) < fooled.mean()


def test_eot_on_a_deterministic_model_equals_the_plain_attack(fn, batch):
  x, y = batch
  np.testing.assert_allclose(attacks.fgsm(fn, x, y, 0.05, eot_samples=4),
                             attacks.fgsm(fn, x, y, 0.05), atol=1e-6)
  np.testing.assert_allclose(
      attacks.pgd(fn, x, y, 0.05, 0.01, 5, eot_samples=3, mc_samples=3),
      attacks.pgd(fn, x, y, 0.05, 0.01, 5), atol=1e-5)


def test_eot_averages_fresh_randomness_on_a_stochastic_model(fn, batch):
  x, y = batch
  x, y = tf.constant(x[:16]), tf.constant(y[:16])
  noisy = lambda z: fn(z) + tf.random.normal([tf.shape(z)[0], 10], stddev=3.0)
  loss = lambda logits: tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=y, logits=logits)

  def spread(samples):
    grads = [attacks.eot.loss_gradient(noisy, loss, x, samples)[0].numpy()
             for _ in range(6)]
    return np.std(grads, axis=0).mean()

  assert spread(16) < 0.5 * spread(1)
  probs = attacks.mean_probabilities(noisy, x, mc_samples=32).numpy()
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  # Averaging 32 passes is far steadier than one pass.
  one = [attacks.mean_probabilities(noisy, x, 1).numpy() for _ in range(4)]
  many = [attacks.mean_probabilities(noisy, x, 32).numpy() for _ in range(4)]
  assert np.std(many, axis=0).mean() < 0.5 * np.std(one, axis=0).mean()


def test_finite_differences_estimate_the_gradient_from_values_alone(fn,
                                                                   batch):
  x, y = batch
  x, y = tf.constant(x[:8]), tf.constant(y[:8])
  loss = lambda logits: tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=y, logits=logits)
  true = attacks.eot.loss_gradient(fn, loss, x)[0].numpy().ravel()
  tf.random.set_seed(0)
  estimated = attacks.eot.finite_differences(fn, 1e-3, 2000)
  guess = attacks.eot.loss_gradient(estimated, loss, x)[0].numpy().ravel()
  # 2,000 random directions for 784 pixels: close to the real gradient
  # (a lying or shattered autodiff gradient would not matter to it).
  assert np.corrcoef(true, guess)[0, 1] > 0.8
  # The same in calls of at most 64 shifted images (4 pairs of 8 images).
  capped = attacks.eot.finite_differences(fn, 1e-3, 2000, max_images=64)
  piecewise = attacks.eot.loss_gradient(capped, loss, x)[0].numpy().ravel()
  assert np.corrcoef(true, piecewise)[0, 1] > 0.8
  # A model whose autodiff gradient is exactly 0 (quantized input) still
  # has a slope at the scale of the smoothing; its values are unchanged.
  quantized = lambda z: fn(tf.round(z * 8) / 8)
  assert not attacks.eot.loss_gradient(quantized, loss, x)[0].numpy().any()
  smooth = attacks.eot.finite_differences(quantized, 0.05, 200)
  np.testing.assert_array_equal(smooth(x).numpy(), quantized(x).numpy())
  slope = attacks.eot.loss_gradient(smooth, loss, x)[0].numpy().ravel()
  assert np.corrcoef(true, slope)[0, 1] > 0.2
  with pytest.raises(ValueError, match='sigma > 0'):
    attacks.eot.finite_differences(fn, 0.0, 4)


def test_inputs_are_never_modified(fn, batch):
  x, y = batch
  x_copy, y_copy = x.copy(), y.copy()
  variable = tf.Variable(x)
  attacks.fgsm(fn, x, y, 0.1)
  attacks.pgd(fn, variable, y, 0.1, 0.02, 3)
  attacks.carlini_wagner_l2(fn, x, y, steps=5, binary_search_steps=2)
  np.testing.assert_array_equal(x, x_copy)
  np.testing.assert_array_equal(y, y_copy)
  np.testing.assert_array_equal(variable.numpy(), x_copy)


@pytest.mark.parametrize('call,message', [
    (lambda f, x, y: attacks.fgsm(f, x, y, -0.1), 'eps'),
    (lambda f, x, y: attacks.pgd(f, x, y, 0.1, 0.2, 3), 'alpha=0.2 is larger'),
    (lambda f, x, y: attacks.pgd(f, x, y, 0.1, 0.01, 3, norm=1), 'norm'),
    (lambda f, x, y: attacks.pgd(f, x, y, 0.1, 0.01, -1), 'steps'),
    (lambda f, x, y: attacks.pgd(f, x, y, 0.1, 0.01, 3, restarts=0), 'restarts'),
    (lambda f, x, y: attacks.fgsm(f, x * np.nan, y, 0.1), 'NaN'),
    (lambda f, x, y: attacks.fgsm(f, x * 255.0, y, 0.1), 'outside'),
    (lambda f, x, y: attacks.carlini_wagner_l2(f, x, y, c=0.0), 'c must'),
    (lambda f, x, y: attacks.carlini_wagner_l2(f, x, y, kappa=-1.0), 'kappa'),
    (lambda f, x, y: attacks.fgsm(f, x, y[:3], 0.1), 'Labels'),
])
def test_bad_parameters_are_refused(fn, batch, call, message):
  x, y = batch
  with pytest.raises(ValueError, match=message):
    call(fn, x[:8], y[:8])


def test_worst_case_takes_the_first_attack_that_fools():
  x = tf.zeros([3, 2, 2, 1])
  a, b = tf.ones([3, 2, 2, 1]), 2 * tf.ones([3, 2, 2, 1])
  chosen, fooled = attacks.worst_case(
      x, {'a': a, 'b': b}, {'a': np.array([True, False, False]),
                            'b': np.array([True, True, False])})
  np.testing.assert_array_equal(fooled, [True, True, False])
  np.testing.assert_array_equal(chosen[:, 0, 0, 0], [1.0, 2.0, 0.0])


def test_sequential_chains_attacks_in_order():
  calls = []
  make = lambda name, shift: (
      lambda images, labels: calls.append(name) or images + shift)
  out = attacks.sequential(tf.zeros([2, 3]), tf.zeros([2], tf.int64),
                           {'a': make('a', 1.0), 'b': make('b', 2.0)})
  assert calls == ['a', 'b']
  np.testing.assert_array_equal(out, 3.0)

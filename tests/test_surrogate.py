"""The stochastic layers' differentiable surrogates for adaptive attacks."""

import numpy as np
import pytest
import tensorflow as tf

from tf_slwta.layers import lwta
from tf_slwta.layers import noise
from tf_slwta.layers import surrogate


def _output_and_gradient(layer, x, mode):
  """The layer's output at x in `mode`, and d sum(output * x) / dx with the
  weights x held fixed (the output's own gradient)."""
  with tf.GradientTape() as tape:
    tape.watch(x)
    with surrogate.gradient_surrogate(mode):
      out = layer(x, training=False)
    total = tf.reduce_sum(out * tf.stop_gradient(x))
  return out.numpy(), tape.gradient(total, x).numpy()


def test_lwta_expected_is_the_mean_of_the_sampled_outputs():
  layer = lwta.LWTA(competitors=2, seed=5)
  x = tf.random.stateless_normal([4, 3, 3, 8], seed=[1, 2])
  with surrogate.gradient_surrogate('expected'):
    expected = layer(x, training=False).numpy()
    again = layer(x, training=False).numpy()
  np.testing.assert_array_equal(expected, again)  # Deterministic.
  # Every copy in a batch gets its own draw: 2000 passes in one call.
  n = 2000
  samples = layer(tf.tile(x, [n, 1, 1, 1]), training=False).numpy()
  samples = samples.reshape((n,) + expected.shape)
  se = samples.std(0) / np.sqrt(n) + 1e-4
  assert np.all(np.abs(samples.mean(0) - expected) <= 5 * se)


def test_lwta_straight_through_samples_forward_and_differentiates_the_mean():
  layer = lwta.LWTA(competitors=2, seed=6)
  x = tf.random.stateless_normal([2, 4, 4, 6], seed=[3, 4])
  expected, expected_grad = _output_and_gradient(layer, x, 'expected')
  straight, straight_grad = _output_and_gradient(layer, x, 'straight_through')
  # The straight-through value is a sample: each unit is (nearly) either
  # its response or silent, never the smooth expectation.
  ratio = np.abs(straight) / (np.abs(x.numpy()) + 1e-6)
  assert np.mean((ratio < 0.05) | (ratio > 0.95)) > 0.95
  assert np.abs(straight - expected).max() > 0.1
  np.testing.assert_allclose(straight_grad, expected_grad, atol=1e-5)
  _, sampled_grad = _output_and_gradient(layer, x, 'sample')
  assert np.abs(sampled_grad - expected_grad).max() > 0.1


def test_noise_expected_is_noise_free_and_sample_is_noisy():
  layer = noise.ActivationNoise(alpha_init=0.5, seed=1)
  x = tf.random.stateless_normal([8, 16], seed=[5, 6])
  with surrogate.gradient_surrogate('expected'):
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
  noisy = layer(x, training=False).numpy()
  assert np.abs(noisy - x.numpy()).mean() > 0.05
  with surrogate.gradient_surrogate('straight_through'):
    assert np.abs(layer(x, training=False).numpy() - x.numpy()).mean() > 0.05


def test_mode_is_restored_and_bad_modes_refused():
  with surrogate.gradient_surrogate('expected'):
    assert surrogate.current() == 'expected'
    with surrogate.gradient_surrogate('straight_through'):
      assert surrogate.current() == 'straight_through'
    assert surrogate.current() == 'expected'
  assert surrogate.current() == 'sample'
  with pytest.raises(ValueError, match='expected'):
    with surrogate.gradient_surrogate('mean'):
      pass
  fn = lambda x: x
  assert surrogate.surrogate_logits_fn(fn, 'sample') is fn

"""Several Monte Carlo / EOT passes in one call (`eot.BatchedPasses`)."""

import numpy as np
import pytest
import tensorflow as tf

from tf_slwta.attacks import eot


class _Model:
  """A smooth 3-class model of 4-pixel images, with optional logit noise
  drawn per element (as a stochastic layer does), counting its calls."""

  def __init__(self, noise=0.0, seed=0):
    self.w = tf.constant(np.random.default_rng(seed).normal(size=(4, 3)),
                         tf.float32)
    self.noise = noise
    # Variables: they count the passes run, compiled (the decisions) or not.
    self._calls = tf.Variable(0, dtype=tf.int64)
    self._images = tf.Variable(0, dtype=tf.int64)

  @property
  def calls(self):
    return int(self._calls.numpy())

  @property
  def images(self):
    return int(self._images.numpy())

  def __call__(self, x):
    self._calls.assign_add(1)
    self._images.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
    logits = tf.tanh(tf.reshape(x, [-1, 4])) @ self.w * 3.0
    if self.noise:
      logits += self.noise * tf.random.normal(tf.shape(logits))
    return logits


def _points(n=6, seed=1):
  return tf.constant(np.random.default_rng(seed).uniform(size=(n, 2, 2, 1)),
                     tf.float32)


def _helpers(y, lag):
  """Each eot helper that runs passes, as fn(logits_fn, x, samples)."""
  ce = lambda z: tf.nn.sparse_softmax_cross_entropy_with_logits(y, z)
  return {
      'mean_probabilities': lambda f, x, s: (
          eot.mean_probabilities(f, x, s),),
      'mean_log_probabilities': lambda f, x, s: (
          eot.mean_log_probabilities(f, x, s),),
      'probabilities_and_loss': lambda f, x, s: eot.probabilities_and_loss(
          f, ce, x, s),
      'loss_gradient': lambda f, x, s: eot.loss_gradient(f, ce, x, s),
      'decision_margin_gradient': lambda f, x, s: eot.decision_margin_gradient(
          f, x, y, lag, s),
  }


@pytest.mark.parametrize('samples,per_call', [(5, 2), (6, 3), (4, 8), (1, 4)])
def test_batched_passes_equal_one_pass_per_call_on_a_deterministic_model(
    samples, per_call):
  x = _points()
  y = tf.constant([0, 1, 2, 0, 1, 2], tf.int64)
  lag = eot.mean_log_probabilities(_Model(), x)
  for name, helper in _helpers(y, lag).items():
    plain, batched = _Model(), _Model()
    want = helper(plain, x, samples)
    got = helper(eot.BatchedPasses(batched, per_call, 10_000), x, samples)
    for a, b in zip(want, got):
      np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-5, atol=2e-6,
                                 err_msg=name)
    # ceil(samples / k) calls of k passes (a remainder call for the rest),
    # the same images in all.
    k = min(per_call, samples)
    assert plain.calls == samples, name
    assert batched.calls == -(-samples // k), name
    assert batched.images == plain.images == samples * 6, name


def test_the_memory_cap_bounds_the_images_of_a_call():
  x = _points(6)
  model = _Model()
  capped = eot.BatchedPasses(model, passes_per_call=8, max_images=13)
  assert capped.per_call(x, samples=10) == 2  # 2 x 6 <= 13 < 3 x 6
  eot.mean_probabilities(capped, x, 10)
  assert model.calls == 5 and model.images == 60
  tiny = eot.BatchedPasses(_Model(), passes_per_call=8, max_images=4)
  assert tiny.per_call(x, samples=10) == 1  # never fewer than one pass
  assert eot.batched(model, 1) is model  # 1: the function itself
  with pytest.raises(ValueError, match='passes_per_call'):
    eot.BatchedPasses(model, 0, 10)


def test_batched_copies_draw_their_own_randomness():
  # Each tiled copy draws its own noise: the k passes of a call differ, and
  # their mean has the spread of k independent passes, not of one.
  tf.random.set_seed(3)
  x = _points(1)
  model = eot.BatchedPasses(_Model(noise=1.0), 50, 10_000)
  stacked = model.stacked(x, 50).numpy()[:, 0, :]
  assert np.unique(stacked[:, 0]).size == 50
  means = [eot.mean_probabilities(model, x, 50).numpy()[0, 0]
           for _ in range(30)]
  one = [tf.nn.softmax(_Model(noise=1.0)(x)).numpy()[0, 0]
         for _ in range(200)]
  # Spread of a 50-pass mean ~ spread of one pass / sqrt(50) (a factor 7);
  # a mean of one pass repeated would keep the full spread.
  assert np.std(means) < np.std(one) / 3


def test_settled_decisions_draw_a_block_per_call_when_batched():
  x = _points(6)
  plain, batched = _Model(), _Model()
  want, used = eot.settled_probabilities(plain, x, cap=10, block=2)
  got, used_b = eot.settled_probabilities(
      eot.BatchedPasses(batched, 4, 10_000), x, cap=10, block=2)
  np.testing.assert_allclose(want.numpy(), got.numpy(), rtol=1e-5)
  np.testing.assert_array_equal(used.numpy(), used_b.numpy())
  # Deterministic: settled after two blocks of two passes, the first pass
  # and the second block's two in one call each.
  assert used.numpy().tolist() == [4] * 6
  assert plain.calls == 4 and batched.calls == 3


def test_the_evaluation_tiles_the_passes_it_is_told_to():
  from tf_slwta import config as config_lib
  from tf_slwta.evaluation import attack_suite
  cfg = config_lib.AttackConfig(attacks=('apgd_ce',), eot_samples=4,
                                mc_samples=4, passes_per_call=4,
                                gradient_modes=('sample',))
  modes = attack_suite.gradient_modes(_Model(noise=0.5), cfg, True,
                                      _points(4))
  assert all(isinstance(fn, eot.BatchedPasses)
             for fn in modes.functions.values())
  with pytest.raises(ValueError, match='passes_per_call'):
    config_lib.AttackConfig(passes_per_call=0)

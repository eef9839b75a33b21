"""How one image is scored: repeated decisions, a row's numbers, the pick."""

import numpy as np
import pytest
import tensorflow as tf

from tf_slwta.evaluation import scoring


class _Counting:
  """A 3-class model whose logits are fixed per image, counting its passes."""

  def __init__(self, logits):
    self.logits = tf.constant(logits, tf.float32)
    # A variable: it counts the passes run, compiled (the decisions) or not.
    self._images = tf.Variable(0, dtype=tf.int64)

  @property
  def images(self):
    return int(self._images.numpy())

  def __call__(self, x):
    self._images.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
    return tf.gather(self.logits, tf.cast(x[:, 0, 0, 0], tf.int32))


def _images(n):
  return tf.reshape(tf.range(n, dtype=tf.float32), [n, 1, 1, 1])


def test_repeated_decisions_draw_every_pass_and_average_them():
  model = _Counting([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
  passes = []
  ok, probs = scoring.decide_repeated(model, _images(2), np.array([0, 0]),
                                      mc_samples=4, repeats=3, passes=passes)
  # Without a block, every decision draws all its passes.
  assert model.images == 2 * 4 * 3 and passes == [4.0, 4.0, 4.0]
  assert ok.shape == (3, 2) and ok[:, 0].all() and not ok[:, 1].any()
  expected = tf.nn.softmax(model.logits).numpy()
  np.testing.assert_allclose(probs, expected, rtol=1e-6)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


def test_settled_decisions_stop_early_on_a_deterministic_model():
  model = _Counting([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
  passes = []
  scoring.decide_repeated(model, _images(2), np.array([0, 1]), mc_samples=10,
                          repeats=2, block=2, passes=passes)
  # Two blocks of 2 settle an answer that never varies.
  assert passes == [4.0, 4.0] and model.images == 2 * 4 * 2


def test_a_row_numbers():
  ok = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)  # 2 decisions, 4 images.
  natural = np.array([[1, 1, 1, 0], [1, 1, 1, 0]], bool)
  l2 = np.array([0.0, 0.5, 1.5, 2.5])
  linf = np.array([0.0, 0.1, 0.3, 0.2])
  row = scoring.summarize(ok, l2, linf, natural)
  assert row['accuracy'] == pytest.approx(3 / 8)
  # Per-decision accuracies 0.5 and 0.25: s.d. 0.177, over sqrt(2).
  assert row['mc_se'] == pytest.approx(np.std([0.5, 0.25], ddof=1) /
                                       np.sqrt(2))
  assert row['image_se'] == pytest.approx(np.sqrt(3 / 8 * 5 / 8 / 4))
  # Of the 3 images right when clean, the attack turned 0.5 + 1 + 1 of
  # their decisions wrong in share: (0 + 0.5 + 1) / 3.
  assert row['success_rate'] == pytest.approx(1 - (1 + 0.5 + 0) / 3)
  # Wrong in more than half the decisions and perturbed: images 2 and 3.
  assert row['median_l2'] == pytest.approx(2.0)
  assert row['max_linf'] == pytest.approx(0.3)
  clean = scoring.summarize(natural, np.zeros(4), np.zeros(4))
  assert clean['success_rate'] is None and clean['median_l2'] is None
  one = scoring.summarize(ok[:1], l2, linf)
  assert one['mc_se'] == 0.0
  nothing_right = scoring.summarize(ok, l2, linf, np.zeros((2, 4), bool))
  assert nothing_right['success_rate'] is None


def test_the_worst_candidate_has_the_fewest_right_decisions_then_margin():
  y = np.array([0, 0, 0])
  images = [np.full((3, 1, 1, 1), v, np.float32) for v in (0.0, 1.0, 2.0)]
  ok = [np.array([[1, 1, 1], [1, 1, 1]], bool),  # Clean: always right.
        np.array([[0, 1, 1], [1, 1, 1]], bool),  # One wrong decision.
        np.array([[1, 1, 1], [1, 1, 1]], bool)]  # Right, smaller margin.
  probs = [np.array([[0.9, 0.1, 0.0]] * 3, np.float32),
           np.array([[0.6, 0.4, 0.0]] * 3, np.float32),
           np.array([[0.5, 0.4, 0.1]] * 3, np.float32)]
  pool = scoring.Candidates(list(images), list(ok), list(probs))
  picked, picked_ok, picked_probs = pool.worst(y)
  # Image 0: the candidate with a wrong decision; images 1, 2: all right,
  # so the lowest margin (candidate 2).
  assert picked[:, 0, 0, 0].tolist() == [1.0, 2.0, 2.0]
  assert picked_ok.shape == (2, 3) and not picked_ok[0, 0]
  np.testing.assert_allclose(picked_probs[1], [0.5, 0.4, 0.1])

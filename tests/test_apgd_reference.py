"""APGD step by step against a NumPy transcription of AutoAttack's reference.

fra31/auto-attack `autopgd_base.py` (`attack_single_run`, L-inf, CE):
momentum 0.75 from the second iteration, checkpoints every k iterations
with k from max(int(0.22 N), 1) shrinking by max(int(0.03 N), 1) down to
max(int(0.06 N), 1), and at each checkpoint the step halved (and the
iterate sent back to the best point) where the loss rose in at most 0.75 k
of the last k steps, or where the step was not halved at the last
checkpoint and the best loss has not improved since. On a linear model the
gradient is exact, so the two must agree iterate for iterate: a mutant
without momentum, with another checkpoint schedule or without either
halving condition takes another path.
"""

import importlib

import numpy as np
import pytest
import tensorflow as tf

from tf_slwta.attacks import common

# The module (tf_slwta.attacks re-exports its function of the same name).
apgd_lib = importlib.import_module('tf_slwta.attacks.apgd')


def _reference_checkpoints(n):
  """(iteration, window) of the reference's counters for N iterations."""
  k = max(int(0.22 * n), 1)
  size_decr, n_min = max(int(0.03 * n), 1), max(int(0.06 * n), 1)
  found, counter = [], 0
  for i in range(n):
    counter += 1
    if counter == k:
      found.append((i, k))
      k = max(k - size_decr, n_min)
      counter = 0
  return found


@pytest.mark.parametrize('steps', [25, 50, 100, 7, 1])
def test_checkpoints_are_the_references(steps):
  assert apgd_lib.checkpoints(steps) == _reference_checkpoints(steps)


def _ce_and_grad(w, b, x, y):
  """Per-example CE of logits x @ w + b and its gradient in x (float32)."""
  z = x @ w + b
  z = z - z.max(axis=1, keepdims=True)
  p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  loss = -np.log(p[np.arange(len(y)), y])
  onehot = np.eye(w.shape[1], dtype=np.float32)[y]
  return loss.astype(np.float32), ((p - onehot) @ w.T).astype(np.float32)


def _reference_apgd(w, b, x, y, eps, n, start, rho=0.75):
  """The reference's single run from `start`; returns (x_best, loss_best,
  step sizes at the end)."""
  k = max(int(0.22 * n), 1)
  size_decr, n_min = max(int(0.03 * n), 1), max(int(0.06 * n), 1)
  x_adv = np.clip(start, 0.0, 1.0)
  x_best = x_adv.copy()
  loss, grad = _ce_and_grad(w, b, x_adv, y)
  grad_best = grad.copy()
  loss_best = loss.copy()
  loss_steps = np.zeros([n, len(y)], np.float32)
  step = np.full([len(y), 1], 2.0 * eps, np.float32)
  x_old = x_adv.copy()
  counter = 0
  best_last_check = loss_best.copy()
  reduced_last_check = np.ones(len(y), bool)
  for i in range(n):
    grad2 = x_adv - x_old
    x_old = x_adv.copy()
    a = 0.75 if i > 0 else 1.0
    x1 = x_adv + step * np.sign(grad)
    x1 = np.clip(np.minimum(np.maximum(x1, x - eps), x + eps), 0.0, 1.0)
    x1 = np.clip(np.minimum(np.maximum(
        x_adv + (x1 - x_adv) * a + grad2 * (1 - a), x - eps), x + eps),
                 0.0, 1.0)
    x_adv = x1.astype(np.float32)
    loss, grad = _ce_and_grad(w, b, x_adv, y)
    loss_steps[i] = loss
    better = loss > loss_best
    x_best[better] = x_adv[better]
    grad_best[better] = grad[better]
    loss_best[better] = loss[better]
    counter += 1
    if counter == k:
      rises = sum((loss_steps[i - c] > loss_steps[i - c - 1])
                  for c in range(k))
      oscillation = rises <= k * rho
      no_improvement = ~reduced_last_check & (best_last_check >= loss_best)
      halve = oscillation | no_improvement
      reduced_last_check = halve.copy()
      best_last_check = loss_best.copy()
      step[halve] /= 2.0
      x_adv[halve] = x_best[halve]
      grad[halve] = grad_best[halve]
      k = max(k - size_decr, n_min)
      counter = 0
  return x_best, loss_best, step[:, 0]


@pytest.mark.parametrize('steps,seed', [(25, 0), (50, 1), (100, 2)])
def test_a_run_follows_the_reference_iterate_for_iterate(steps, seed):
  rng = np.random.default_rng(seed)
  d, k, n = 16, 10, 32
  w = rng.normal(size=(d, k)).astype(np.float32)
  b = rng.normal(size=(k,)).astype(np.float32)
  x = rng.uniform(0.2, 0.8, size=(n, d)).astype(np.float32)
  y = rng.integers(0, k, size=n)
  eps = 0.05
  wt, bt = tf.constant(w), tf.constant(b)
  logits = lambda v: tf.reshape(v, [tf.shape(v)[0], -1]) @ wt + bt
  images = tf.constant(x.reshape(n, 4, 4, 1))
  labels = tf.constant(y, tf.int64)
  run_seed = tf.constant([seed, 0], tf.int64)
  ids = tf.range(n, dtype=tf.int64)
  # The same start as the run's: x + eps * unit(uniform(-1, 1)).
  start = common.uniform_draws(images.shape, run_seed, ids, -1.0, 1.0)
  start = images + eps * apgd_lib._unit(start, 'inf')  # pylint: disable=protected-access
  _, best = apgd_lib._run(  # pylint: disable=protected-access
      logits, images, labels, None, tf.constant(eps), 'inf', steps, 'ce',
      0.75, 0.0, 1.0, 1, run_seed, ids, lambda i: None)
  expected, loss_best, _ = _reference_apgd(
      w, b, x, y, eps, steps, start.numpy().reshape(n, d))
  np.testing.assert_allclose(best.numpy().reshape(n, d), expected, atol=1e-5)
  # Non-trivial: the run moved, and halved its step on some examples.
  assert loss_best.mean() > _ce_and_grad(w, b, x, y)[0].mean() + 0.1


def test_the_second_halving_condition_alone_halves():
  # The loss rose in every step since the last checkpoint (no
  # oscillation), but the best loss has not improved and the step was not
  # halved then: the reference halves.
  halve = apgd_lib.halving(
      at_check=tf.constant(True), rises=tf.constant([4.0, 4.0]),
      window=tf.constant(4.0), rho=0.75,
      reduced=tf.constant([False, True]),
      best_at_check=tf.constant([1.0, 1.0]), best_loss=tf.constant([1.0, 1.0]))
  assert halve.numpy().tolist() == [True, False]
  oscillating = apgd_lib.halving(
      at_check=tf.constant(True), rises=tf.constant([3.0]),
      window=tf.constant(4.0), rho=0.75, reduced=tf.constant([True]),
      best_at_check=tf.constant([0.0]), best_loss=tf.constant([1.0]))
  assert oscillating.numpy().tolist() == [True]
  assert not apgd_lib.halving(
      at_check=tf.constant(False), rises=tf.constant([0.0]),
      window=tf.constant(4.0), rho=0.75, reduced=tf.constant([False]),
      best_at_check=tf.constant([1.0]), best_loss=tf.constant([1.0])
  ).numpy().any()

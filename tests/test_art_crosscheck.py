"""Cross-check with the Adversarial Robustness Toolbox on the same model."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from attack_fixtures import accuracy, logits_fn, sample_batch, trained_model
from tf_slwta import attacks

with warnings.catch_warnings():
  warnings.simplefilter('ignore')  # ART warns that PyTorch is absent.
  from art.attacks.evasion import AutoProjectedGradientDescent
  from art.attacks.evasion import FastGradientMethod
  from art.attacks.evasion import ProjectedGradientDescent
  from art.attacks.evasion import SquareAttack
  from art.estimators.classification import TensorFlowV2Classifier


@pytest.fixture(scope='module')
def art_classifier():
  return TensorFlowV2Classifier(
      model=trained_model(), nb_classes=10, input_shape=(28, 28, 1),
      loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      clip_values=(0.0, 1.0))


@pytest.mark.parametrize('norm,eps', [(np.inf, 0.02), (np.inf, 0.05), (2, 0.5)])
def test_fgsm_equals_art(art_classifier, norm, eps):
  x, y = sample_batch(256)
  theirs = FastGradientMethod(art_classifier, norm=norm, eps=eps,
                              batch_size=256).generate(x, y=y)
  ours = attacks.fgsm(logits_fn(), x, y, eps, norm=norm).numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize('norm,eps,alpha', [(np.inf, 0.02, 0.005),
                                            (np.inf, 0.03, 0.0075),
                                            (2, 0.4, 0.1)])
def test_pgd_robust_accuracy_within_two_points_of_art(art_classifier, norm,
                                                       eps, alpha):
  x, y = sample_batch(512)
  np.random.seed(0)  # ART draws its random start with NumPy.
  theirs = ProjectedGradientDescent(
      art_classifier, norm=norm, eps=eps, eps_step=alpha, max_iter=10,
      num_random_init=1, batch_size=512, verbose=False).generate(x, y=y)
  ours = attacks.pgd(logits_fn(), x, y, eps, alpha, 10, norm=norm)
  art_accuracy = accuracy(logits_fn(), theirs, y)
  our_accuracy = accuracy(logits_fn(), ours, y)
  assert art_accuracy < accuracy(logits_fn(), x, y) - 0.3  # A real attack.
  assert abs(our_accuracy - art_accuracy) <= 0.02


@pytest.mark.parametrize('norm,eps,loss', [(np.inf, 0.02, 'ce'),
                                           (np.inf, 0.02, 'dlr'),
                                           (2, 0.4, 'ce')])
def test_apgd_is_at_least_as_strong_as_art(art_classifier, norm, eps, loss):
  x, y = sample_batch(256)
  np.random.seed(0)
  theirs = AutoProjectedGradientDescent(
      art_classifier, norm=norm, eps=eps, eps_step=2 * eps, max_iter=20,
      nb_random_init=1, batch_size=256, verbose=False,
      loss_type={'ce': 'cross_entropy', 'dlr': 'difference_logits_ratio'}[
          loss]).generate(x, y=y)
  ours = attacks.apgd(logits_fn(), x, y, eps, norm=norm, steps=20, loss=loss)
  art_accuracy = accuracy(logits_fn(), theirs, y)
  assert art_accuracy < accuracy(logits_fn(), x, y) - 0.3  # A real attack.
  assert accuracy(logits_fn(), ours, y) <= art_accuracy + 0.02


@pytest.mark.parametrize('norm,eps', [(np.inf, 0.03), (2, 1.0)])
def test_square_is_as_strong_as_art_at_equal_queries(art_classifier, norm,
                                                     eps):
  # A random search: one run's accuracy moves by a few points with its
  # seed, so both sides are averaged over three.
  x, y = sample_batch(128)
  art_accuracy, our_accuracy = [], []
  for seed in range(3):
    np.random.seed(seed)
    theirs = SquareAttack(art_classifier, norm=norm, eps=eps, max_iter=300,
                          p_init=0.8, nb_restarts=1, batch_size=128,
                          verbose=False).generate(x, y=y)
    ours = attacks.square(logits_fn(), x, y, eps, norm=norm, queries=300,
                          seed=seed)
    art_accuracy.append(accuracy(logits_fn(), theirs, y))
    our_accuracy.append(accuracy(logits_fn(), ours, y))
  assert np.mean(art_accuracy) < accuracy(logits_fn(), x, y) - 0.1
  assert np.mean(our_accuracy) <= np.mean(art_accuracy) + 0.02

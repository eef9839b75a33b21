"""APGD and Square: known answers on a linear model, schedule, bounds."""

import dataclasses
import importlib

import numpy as np
import pytest
import tensorflow as tf

from attack_fixtures import accuracy, logits_fn, sample_batch
from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta.evaluation import attack_suite

# The package exports functions named like these modules.
apgd_lib = importlib.import_module('tf_slwta.attacks.apgd')
square_lib = importlib.import_module('tf_slwta.attacks.square')

_SHAPE = (8, 8, 1)
_CLASSES = 4


def _linear_problem(seed=0, n=200):
  """A linear classifier z = W x + b on 8x8 images near mid-grey.

  Returns (logits_fn, x `[n, 8, 8, 1]`, y `[n]`, critical L-inf eps `[n]`,
  critical L2 eps `[n]`): the smallest perturbation that changes the
  decision, in closed form (the box [0, 1] does not bind: x is within
  0.3 of 0.5 and every eps tested is under 0.2 per pixel).
  """
  rng = np.random.default_rng(seed)
  dims = int(np.prod(_SHAPE))
  w = rng.normal(size=(dims, _CLASSES)).astype(np.float32)
  b = rng.normal(size=_CLASSES).astype(np.float32)
  x = (0.5 + rng.uniform(-0.3, 0.3, size=(n, dims))).astype(np.float32)
  z = x @ w + b
  y = z.argmax(1)
  linf, l2 = np.full(n, np.inf), np.full(n, np.inf)
  for j in range(_CLASSES):
    diff = w[:, y].T - w[:, j]  # [n, dims]: w_y - w_j
    margin = z[np.arange(n), y] - z[:, j]
    ok = j != y
    linf[ok] = np.minimum(linf[ok], margin[ok] / np.abs(diff[ok]).sum(1))
    l2[ok] = np.minimum(l2[ok], margin[ok] / np.linalg.norm(diff[ok], axis=1))
  wt, bt = tf.constant(w), tf.constant(b)
  fn = lambda images: tf.matmul(tf.reshape(images, [-1, dims]), wt) + bt
  return fn, x.reshape((n,) + _SHAPE), y, linf, l2


@pytest.fixture(scope='module')
def linear():
  return _linear_problem()


def _check_against_closed_form(fooled, critical, eps, band):
  """Examples whose critical eps is clearly under eps are fooled, clearly
  over it are not; `band` is the relative margin left undecided."""
  below = critical < eps * (1 - band)
  above = critical > eps * (1 + 1e-3)
  assert below.sum() >= 20 and above.sum() >= 20, (below.sum(), above.sum())
  assert not fooled[above].any()  # Nothing beats the optimum.
  return fooled[below].mean()


@pytest.mark.parametrize('loss', ['ce', 'dlr'])
@pytest.mark.parametrize('norm', ['inf', 2])
def test_apgd_reaches_the_closed_form_optimum_of_a_linear_model(linear, loss,
                                                                norm):
  fn, x, y, linf, l2 = linear
  critical = linf if norm == 'inf' else l2
  eps = float(np.median(critical))
  adv = attacks.apgd(fn, x, y, eps, norm=norm, steps=50, loss=loss)
  fooled = attacks.predict(fn, adv).numpy() != y
  # An untargeted loss can climb towards a class other than the nearest
  # one (the cross-entropy weighs every wrong class); APGD-T cannot.
  assert _check_against_closed_form(fooled, critical, eps, 0.02) >= 0.95


@pytest.mark.parametrize('norm', ['inf', 2])
def test_apgd_targeted_reaches_the_optimum_exactly(linear, norm):
  fn, x, y, linf, l2 = linear
  critical = linf if norm == 'inf' else l2
  eps = float(np.median(critical))
  adv = attacks.apgd_targeted(fn, x, y, eps, norm=norm, steps=30,
                              target_classes=3)
  fooled = attacks.predict(fn, adv).numpy() != y
  assert _check_against_closed_form(fooled, critical, eps, 0.02) == 1.0


@pytest.mark.parametrize('norm,share', [('inf', 0.95), (2, 0.9)])
def test_square_nearly_reaches_the_optimum_without_gradients(linear, norm,
                                                             share):
  fn, x, y, linf, l2 = linear
  critical = linf if norm == 'inf' else l2
  eps = float(np.median(critical))
  adv = attacks.square(fn, x, y, eps, norm=norm, queries=1000, seed=3)
  fooled = attacks.predict(fn, adv).numpy() != y
  # A random search gets close, not exactly, to the optimum: over seeds
  # 0-5, 1.0 of the examples agree with the closed form in L-inf, 0.93 to
  # 1.0 in L2 (the same before and after the search's random stream
  # changed).
  assert _check_against_closed_form(fooled, critical, eps, 0.3) >= share


@pytest.mark.parametrize('norm,eps', [('inf', 0.03), (2, 0.5)])
def test_apgd_and_square_stay_in_the_ball_and_the_range(norm, eps):
  fn = logits_fn()
  x, y = sample_batch(64)
  for adv in (attacks.apgd(fn, x, y, eps, norm=norm, steps=10, restarts=2),
              attacks.apgd_targeted(fn, x, y, eps, norm=norm, steps=10,
                                    target_classes=2),
              attacks.square(fn, x, y, eps, norm=norm, queries=50)):
    delta = (adv.numpy() - x).reshape(len(x), -1)
    size = (np.abs(delta).max(1) if norm == 'inf'
            else np.linalg.norm(delta, axis=1))
    assert size.max() <= eps + 1e-5
    assert adv.numpy().min() >= 0.0 and adv.numpy().max() <= 1.0


def test_apgd_beats_or_matches_pgd_with_the_same_budget():
  fn = logits_fn()
  x, y = sample_batch(256)
  eps = 0.02
  ours = accuracy(fn, attacks.apgd(fn, x, y, eps, steps=40), y)
  theirs = accuracy(fn, attacks.pgd(fn, x, y, eps, eps / 4, 40), y)
  assert ours <= theirs + 0.01
  assert ours < accuracy(fn, x, y) - 0.3


def test_checkpoints_follow_the_paper():
  # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).
  marks = [at + 1 for at, _ in apgd_lib.checkpoints(100)]
  p, expected = [0.0, 0.22], []
  while p[-1] <= 1.0:
    expected.append(round(p[-1] * 100))
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  assert marks == expected
  # Windows: the iterations since the previous checkpoint.
  windows = [w for _, w in apgd_lib.checkpoints(100)]
  assert windows == [b - a for a, b in zip([0] + marks, marks)]


def test_square_schedule_and_pattern():
  assert square_lib.p_schedule(0, 10000, 0.8) == 0.8
  assert square_lib.p_schedule(11, 10000, 0.8) == 0.4
  assert square_lib.p_schedule(9000, 10000, 0.8) == pytest.approx(0.8 / 512)
  # Rescaled to a smaller budget: the same fractions of the run.
  assert square_lib.p_schedule(500, 1000, 0.8) == pytest.approx(0.8 / 128)
  sizes = square_lib.window_sizes(1000, 0.8, (28, 28, 1), '2')
  assert sizes[0] == 25 and np.all(sizes % 2 == 1) and sizes.min() >= 3
  assert np.all(np.diff(sizes) <= 0)
  pattern = square_lib.pseudo_gaussian(7)
  np.testing.assert_allclose(np.sum(pattern ** 2), 1.0, rtol=1e-6)
  assert pattern[:3].min() > 0 and pattern[3:].max() < 0


def test_bad_arguments_are_refused():
  fn = logits_fn()
  x, y = sample_batch(8)
  with pytest.raises(ValueError, match='loss'):
    attacks.apgd(fn, x, y, 0.1, loss='hinge')
  with pytest.raises(ValueError, match='rho'):
    attacks.apgd(fn, x, y, 0.1, rho=1.5)
  with pytest.raises(ValueError, match='target_classes'):
    attacks.apgd_targeted(fn, x, y, 0.1, steps=2, target_classes=10)
  with pytest.raises(ValueError, match='p_init'):
    attacks.square(fn, x, y, 0.1, p_init=0.0)
  two_classes = lambda images: fn(images)[:, :2]
  with pytest.raises(ValueError, match='DLR loss needs at least 3'):
    attacks.apgd(two_classes, x, y % 2, 0.1, steps=2, loss='dlr')
  np.testing.assert_array_equal(attacks.apgd(fn, x, y, 0.0), x)
  np.testing.assert_array_equal(attacks.square(fn, x, y, 0.0), x)


def test_square_finds_the_optimum_of_a_model_that_answers_with_noise():
  # A linear model (weights constant on 4x4 blocks) whose every logit gets
  # Gaussian noise of s.d. 0.5 on every pass (benchmarks/
  # square_noisy_toy.py); the best L-inf attack is a known corner. One
  # noisy verdict proves nothing, so the search must neither stop at it
  # nor keep a margin that was low by luck (before: 68.8% on one pass per
  # estimate, optimum 45.2%).
  rng = np.random.default_rng(0)
  blocks = rng.normal(size=(2, 2, 3)).astype(np.float32) / 4
  weights = np.repeat(np.repeat(blocks, 4, 0), 4, 1).reshape(64, 3) * 32
  x = rng.uniform(0.3, 0.7, size=(200, 8, 8, 1)).astype(np.float32)
  y = (x.reshape(200, -1) @ weights).argmax(1)
  w, eps = tf.constant(weights), 0.016
  mean_fn = lambda v: tf.reshape(v, [tf.shape(v)[0], -1]) @ w
  noisy = lambda v: mean_fn(v) + tf.random.normal([tf.shape(v)[0], 3],
                                                   stddev=0.5)
  corners = []
  for image, label in zip(x.reshape(200, -1), y):
    # Towards class j, the corner lowers z_y - z_j the most; take the j
    # whose corner's margin is lowest.
    gaps = [weights[:, label] - weights[:, j] for j in range(3) if j != label]
    corners.append(min(((image - eps * np.sign(d)) for d in gaps),
                       key=lambda c: min(c @ d for d in gaps)))
  optimum = np.clip(np.array(corners), 0, 1).reshape(x.shape)
  tf.random.set_seed(0)
  score = lambda images: accuracy(noisy, images, y, mc_samples=4)
  best = score(optimum)
  one_pass = score(attacks.square(noisy, x, y, eps, queries=2000, seed=0))
  four = score(attacks.square(noisy, x, y, eps, queries=2000, seed=0,
                              mc_samples=4))
  stand_in = score(attacks.square(noisy, x, y, eps, queries=2000, seed=0,
                                  score_fn=mean_fn))
  assert 0.3 < best < 0.6
  assert four <= best + 0.05 and one_pass <= best + 0.08
  assert stand_in <= best + 0.03


def test_square_samples_sets_the_passes_of_a_stochastic_search():
  x, y = sample_batch(4)
  base = logits_fn()
  seen = tf.Variable(0, dtype=tf.int64)

  def noisy(v):  # Counts the images it is shown.
    seen.assign_add(tf.cast(tf.shape(v)[0], tf.int64))
    return base(v) + tf.random.normal(tf.shape(base(v)), stddev=0.1)

  cfg = config_lib.AttackConfig(aa_eps=0.1, square_queries=20,
                                mc_samples=6, gradient_modes=('sample',))
  modes = attack_suite.gradient_modes(noisy, cfg, True, tf.constant(x))
  counts = {}
  for samples in (0, 2):
    variant, = attack_suite.square_variants(
        noisy, dataclasses.replace(cfg, square_samples=samples), modes, True)
    seen.assign(0)
    variant.run(x, y, 0)
    counts[samples] = int(seen.numpy())
    assert ('2 passes per estimate' in variant.settings) == (samples == 2)
  # Every query estimates the incumbent and a challenger: 2 passes of each
  # instead of the decision's 6.
  assert counts[2] * 3 == counts[0], counts
  with pytest.raises(ValueError, match='square_samples'):
    config_lib.AttackConfig(square_samples=-1)

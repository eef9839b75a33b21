"""Defenses: the attack mixture, Parametric Noise Injection, smoothing, the grid."""

import dataclasses
import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_slwta import cli
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.defenses import mixture as mixture_lib
from tf_slwta.evaluation import certify
from tf_slwta.layers import lwta
from tf_slwta.layers import noise
from tf_slwta.modes import certify as certify_mode
from tf_slwta.modes import common
from tf_slwta.modes import grid as grid_mode
from tf_slwta.modes import train as train_mode
from tf_slwta.training import loop
from tf_slwta.training import optimizer as optimizer_lib
from tf_slwta.training import state as state_lib
from tf_slwta.training import steps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_DEVICE = lambda: tf.distribute.OneDeviceStrategy('/cpu:0')
SEED_ROWS = sorted(glob.glob(os.path.join(REPO, 'flags', 'seed_table',
                                          '[0-9]*.cfg')))


def tiny_config(output_dir, **train):
  return config_lib.ExperimentConfig(
      output_dir=str(output_dir),
      data=config_lib.DataConfig(dataset='synthetic', train_examples=64,
                                 eval_examples=32, batch_size=32,
                                 eval_batch_size=32),
      model=config_lib.ModelConfig(seed_cnn_filters=(4, 8), seed_cnn_units=16),
      train=config_lib.TrainConfig(epochs=1, strategy='one_device', **train),
      attack=config_lib.AttackConfig(pgd_steps=2, cw_steps=2))


def test_seed_mixture_draws_each_slot_an_eighth_of_the_time():
  mixture = mixture_lib.AttackMixture(config_lib.SEED_MIXTURE,
                                      config_lib.AttackConfig(), 0.1,
                                      ONE_DEVICE())
  tf.random.set_seed(1234)

  @tf.function
  def draw_many(n):
    for _ in tf.range(n):
      mixture.draw()

  draw_many(tf.constant(8000))
  counts = tf.convert_to_tensor(mixture.counts).numpy()
  # Slots 0..3 (noise, fgsm, pgd, cw) 1/8 each; 4..7 (clean) 4/8.
  expected = 8000 * np.array([1, 1, 1, 1, 4]) / 8
  chi_square = float(((counts - expected) ** 2 / expected).sum())
  assert counts.sum() == 8000
  assert chi_square < 13.28  # 1% critical value, 4 degrees of freedom.
  assert mixture.summaries()['mixture/clean'] == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize('branch', config_lib.MIXTURE_BRANCHES)
def test_a_training_step_with_each_branch_changes_the_weights(tmp_path, branch):
  cfg = tiny_config(tmp_path, mixture=((branch, 1.0),), learning_rate=0.1)
  strategy = ONE_DEVICE()
  state = state_lib.build_training_state(cfg, strategy, steps_per_epoch=2)
  before = [v.numpy().copy() for v in state.model.trainable_variables]
  mixture = common.perturbation(cfg, strategy)
  step = steps.make_train_step(state, strategy, global_batch_size=32,
                              label_smoothing=0.0, perturb=mixture)
  images, labels = data_lib.load_arrays(cfg.data, 'train')
  iterator = iter(strategy.distribute_datasets_from_function(
      data_lib.train_dataset_fn(images, labels, global_batch_size=32, epoch=0,
                                seed=0, augment=False)))
  objective, _ = step(iterator)
  assert np.isfinite(objective.numpy())
  after = [v.numpy() for v in state.model.trainable_variables]
  assert any(not np.allclose(a, b) for a, b in zip(before, after))
  counts = tf.convert_to_tensor(mixture.counts).numpy()
  assert counts[config_lib.MIXTURE_BRANCHES.index(branch)] == 1


def test_perturbing_branches_move_the_batch():
  model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(10)])
  images = tf.random.uniform([8, 28, 28, 1], 0.2, 0.8)
  # The model's own answers: every example starts correctly classified, so
  # CW (which keeps the smallest successful perturbation) must move it.
  labels = tf.argmax(model(images), axis=-1)
  attack = config_lib.AttackConfig(fgsm_eps=0.1, pgd_eps=0.1, pgd_alpha=0.05,
                                   pgd_steps=2, cw_c=10.0, cw_steps=5)
  for branch in ('noise', 'fgsm', 'pgd', 'cw'):
    mixture = mixture_lib.AttackMixture(((branch, 1.0),), attack, 0.1,
                                        ONE_DEVICE())
    out = mixture(model, images, labels).numpy()
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, images.numpy()), branch
    if branch in ('fgsm', 'pgd'):
      assert np.abs(out - images.numpy()).max() <= 0.1 + 1e-5


@pytest.mark.parametrize('gradient', config_lib.MIXTURE_GRADIENTS)
def test_lwta_models_are_attacked_through_each_gradient_path(gradient):
  model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(16), lwta.LWTA(seed=1),
                            keras.layers.Dense(10)])
  images = tf.random.uniform([8, 28, 28, 1], 0.2, 0.8, seed=3)
  labels = tf.argmax(model(images, training=False), axis=-1)
  attack = config_lib.AttackConfig(pgd_eps=0.1, pgd_alpha=0.05, pgd_steps=2)
  mixture = mixture_lib.AttackMixture((('pgd', 1.0),), attack, 0.1,
                                      ONE_DEVICE(), gradient=gradient)
  out = tf.function(lambda x, y: mixture(model, x, y))(images, labels).numpy()
  assert 0 < np.abs(out - images.numpy()).max() <= 0.1 + 1e-5
  with pytest.raises(ValueError, match='gradient'):
    mixture_lib.AttackMixture((('pgd', 1.0),), attack, 0.1, ONE_DEVICE(),
                              gradient='mean')


def test_clean_loss_weight_mixes_the_two_losses(tmp_path):
  shift = lambda model, images, labels: tf.clip_by_value(images + 0.3, 0, 1)
  results = {}
  for weight in (0.0, 0.5):
    cfg = tiny_config(tmp_path / str(weight), clean_loss_weight=weight)
    results[weight] = loop.train(cfg, ONE_DEVICE(), perturb=shift)
  assert results[0.0]['train/loss'] != results[0.5]['train/loss']


def test_pni_alpha_gets_a_gradient_and_zero_alpha_is_deterministic():
  x = tf.random.normal([4, 6, 6, 3])
  for layer in (noise.ActivationNoise(), noise.NoisyConv2D(5, 3),
                noise.NoisyDense(7)):
    inputs = tf.reshape(x, [4, -1]) if isinstance(layer, noise.NoisyDense) else x
    with tf.GradientTape() as tape:
      out = layer(inputs, training=True)
      loss = tf.reduce_sum(out ** 2)
    grad = tape.gradient(loss, layer.alpha)
    assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0
    assert layer.alpha.name == noise.ALPHA_NAME
    assert float(layer.alpha) == 0.25
    # Noise stays on at test time by default...
    assert not np.allclose(layer(inputs, training=False),
                           layer(inputs, training=False))
    # ...and alpha = 0 makes the layer deterministic.
    layer.alpha.assign(tf.zeros_like(layer.alpha))
    np.testing.assert_array_equal(layer(inputs, training=True),
                                  layer(inputs, training=True))


def test_pni_can_be_off_at_test_and_channelwise():
  layer = noise.ActivationNoise(noise_at_test=False, channelwise=True)
  x = tf.random.normal([2, 5, 5, 4])
  np.testing.assert_array_equal(layer(x, training=False), x)
  assert layer.alpha.shape == (4,)
  assert not np.allclose(layer(x, training=True), x)


def test_pni_model_places_and_weight_decay(tmp_path):
  info = data_lib.dataset_info('synthetic')
  from tf_slwta import models  # pylint: disable=g-import-not-at-top
  model = models.build_model(config_lib.ModelConfig(pni='both'), info)
  names = [l.name for l in model.layers]
  for point in ('after_pool1', 'after_pool2', 'after_flatten'):
    assert f'pni_{point}' in names
  assert isinstance(model.get_layer('conv1'), noise.NoisyConv2D)
  assert isinstance(model.get_layer('logits'), noise.NoisyDense)
  optimizer = optimizer_lib.make_optimizer(config_lib.TrainConfig(weight_decay=0.1), 10)
  alphas = [v for v in model.trainable_variables if v.name == noise.ALPHA_NAME]
  assert len(alphas) == 3 + 4
  optimizer.build(model.trainable_variables)
  assert not any(optimizer._use_weight_decay(v) for v in alphas)  # pylint: disable=protected-access
  assert optimizer._use_weight_decay(model.get_layer('conv1').kernel)  # pylint: disable=protected-access
  path = str(tmp_path / 'pni.keras')
  model.get_layer('conv2').alpha.assign(0.7)
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.get_layer('pni_after_flatten').get_config() == (
      model.get_layer('pni_after_flatten').get_config())
  assert float(loaded.get_layer('conv2').alpha) == pytest.approx(0.7)
  np.testing.assert_array_equal(loaded.get_layer('dense').kernel,
                                model.get_layer('dense').kernel)


GENERATOR = tf.random.Generator.from_seed(7)


def _certify_cfg(**kwargs):
  return config_lib.CertifyConfig(**{'sigma': 0.5, 'n0': 20, 'n': 200,
                                     'alpha': 0.001, 'batch_size': 100,
                                     **kwargs})


def test_certify_constant_classifier_has_the_closed_form_radius():
  always_three = lambda x: tf.one_hot(tf.fill([tf.shape(x)[0]], 3), 10) * 5.0
  cfg = _certify_cfg()
  image = np.full((4, 4, 1), 0.5, np.float32)
  label, radius = certify.certify(always_three, image, cfg, 10, GENERATOR)
  p_lower = cfg.alpha ** (1.0 / cfg.n)  # Clopper-Pearson with n of n.
  expected = cfg.sigma * float(tfp.distributions.Normal(0., 1.).quantile(p_lower))
  assert label == 3
  assert radius == pytest.approx(expected, rel=1e-4)
  assert certify.predict(always_three, image, cfg, 10, GENERATOR) == 3


def test_certify_abstains_when_two_classes_tie():
  # Class 0 or 1 by the sign of the noise on pixel 0: a fair coin.
  coin = lambda x: tf.one_hot(tf.cast(x[:, 0, 0, 0] > 0.5, tf.int32), 10) * 5.0
  cfg = _certify_cfg()
  image = np.full((4, 4, 1), 0.5, np.float32)
  assert certify.predict(coin, image, cfg, 10, GENERATOR) == certify.ABSTAIN
  assert certify.certify(coin, image, cfg, 10, GENERATOR) == (certify.ABSTAIN, 0.0)


def test_certify_draws_fresh_noise_for_selection_and_estimation():
  # Votes by which of 10 bins the noise on one pixel falls in: if the n0
  # selection draw replayed the start of the n estimation draw, these
  # counts would match; two fresh draws of 100 match with a chance of
  # about 1e-7 (a sign's two bins would match 8% of the time).
  sign = lambda x: tf.one_hot(tf.cast(tf.clip_by_value(
      tf.floor((x[:, 0, 0, 0] - 0.5) / 0.25) + 5, 0, 9), tf.int32), 10)
  image = np.full((2, 2, 1), 0.5, np.float32)
  generator = tf.random.Generator.from_seed(3)
  first = certify.sample_counts(sign, image, 100, 0.5, 100, 10, generator)
  second = certify.sample_counts(sign, image, 500, 0.5, 500, 10, generator)
  again = certify.sample_counts(sign, image, 100, 0.5, 100, 10, generator)
  assert first.sum() == again.sum() == 100 and second.sum() == 500
  assert not np.array_equal(first, again)


def test_certify_dataset_reports_certified_accuracy():
  always_three = lambda x: tf.one_hot(tf.fill([tf.shape(x)[0]], 3), 10) * 5.0
  images = np.full((3, 4, 4, 1), 128, np.uint8)
  result = certify.certify_dataset(always_three, images, np.array([3, 3, 1]),
                                   _certify_cfg(radii=(0.0, 0.5, 5.0)), 10,
                                   verbose=False)
  assert result['certified_accuracy'] == {'0.0': 2 / 3, '0.5': 2 / 3,
                                          '5.0': 0.0}
  assert result['predict_accuracy'] == pytest.approx(2 / 3)
  assert result['certify_abstain_rate'] == 0.0


def _shared_noise_model():
  """A tiny model whose one noisy kernel dominates its decision (PNI)."""
  keras.utils.set_random_seed(5)
  inputs = keras.Input((2, 2, 1))
  x = keras.layers.Flatten()(inputs)
  logits = noise.NoisyDense(10, alpha_init=20.0, seed=3, name='noisy')(x)
  return keras.Model(inputs, logits)


def test_certify_refuses_votes_that_share_one_noise_draw():
  model = _shared_noise_model()
  shared = noise.batch_shared_layers(model)
  assert [l.name for l in shared] == ['noisy']
  with pytest.raises(ValueError, match='certify_batch_size=1'):
    certify.check_independent_votes(shared, batch_size=100)
  certify.check_independent_votes(shared, batch_size=1)  # Accepted.
  certify.check_independent_votes([], batch_size=100)
  # Why: 20 batches of 50 copies. With one kernel draw per batch the votes
  # of a batch agree, so the top class's count is far more spread than 20
  # independent binomials; one copy per call gives the binomial spread.
  fn = lambda x: model(x, training=False)
  image = np.full((2, 2, 1), 0.5, np.float32)

  def spread(batch_size):
    generator = tf.random.Generator.from_seed(1)
    top = [certify.sample_counts(fn, image, 50, 0.1, batch_size, 10,
                                 generator).max() for _ in range(20)]
    return np.std(top)

  shared_spread, independent_spread = spread(50), spread(1)
  assert shared_spread > 2 * independent_spread
  assert independent_spread < 6  # sqrt(50 p (1 - p)) <= 3.5, plus slack.


def test_certify_statistics():
  # Reference values from scipy.stats.binomtest(k, n).pvalue and
  # scipy.stats.beta.ppf(alpha, k, n - k + 1).
  assert certify.binomial_p_value(50, 50) == pytest.approx(1.0)
  assert certify.binomial_p_value(60, 40) == pytest.approx(0.056888, abs=1e-5)
  assert certify.clopper_pearson_lower(0, 10, 0.05) == 0.0
  assert certify.clopper_pearson_lower(50, 100, 0.05) == pytest.approx(
      0.413622, abs=1e-5)


def test_seed_table_has_seven_rows():
  names = [os.path.basename(p) for p in SEED_ROWS]
  assert len(names) == 7 and names[0] == '1_regular.cfg'
  cifar = glob.glob(os.path.join(REPO, 'flags', 'seed_table', 'cifar10', '*.cfg'))
  assert len(cifar) == 7
  row6 = cli.parse_flagfiles([os.path.relpath(SEED_ROWS[5], REPO)])
  assert row6.train.mixture == config_lib.SEED_MIXTURE
  assert cli.parse_flagfiles([os.path.relpath(SEED_ROWS[1], REPO)]).model.pni == 'activation'


@pytest.mark.slow
@pytest.mark.parametrize('row', SEED_ROWS, ids=[os.path.basename(p) for p in SEED_ROWS])
def test_every_grid_row_trains_one_step_on_synthetic_data(row, tmp_path,
                                                          monkeypatch):
  monkeypatch.chdir(REPO)
  overrides = tmp_path / 'tiny.cfg'
  overrides.write_text('\n'.join([
      '--dataset=synthetic', '--train_examples=32', '--eval_examples=32',
      '--batch_size=32', '--eval_batch_size=32', '--epochs=1',
      '--seed_cnn_filters=4,8', '--seed_cnn_units=16', '--strategy=one_device',
      f'--output_dir={tmp_path / "run"}']))
  cfg = cli.parse_flagfiles([os.path.relpath(row, REPO), str(overrides)])
  record = loop.train(cfg, ONE_DEVICE(),
                      perturb=common.perturbation(cfg, ONE_DEVICE()))
  assert record['step'] == 1 and np.isfinite(record['train/loss'])


@pytest.mark.slow
def test_grid_mode_writes_one_table_and_reuses_finished_rows(tmp_path,
                                                             monkeypatch):
  monkeypatch.chdir(REPO)
  rows = []
  for name, extra in (('a_plain', ''), ('b_mixture', '--mixture=noise:1,fgsm:1')):
    path = tmp_path / f'{name}.cfg'
    path.write_text('\n'.join([
        '--flagfile=flags/smoke.cfg', '--flagfile=flags/attacks/seed.cfg',
        '--epochs=1', '--eval_examples=64', extra,
        f'--output_dir={tmp_path / "runs" / name}']))
    rows.append(str(path))
  base = config_lib.ExperimentConfig(mode='grid', grid=tuple(rows),
                                     output_dir=str(tmp_path / 'unused'))
  grid_mode.run(base, run_folder.RunFolder(base.output_dir))
  table = (tmp_path / 'runs' / 'grid.md').read_text().splitlines()
  assert table[0].startswith('| model | Natural (%) | PGD Linf (%) | FGSM (%)')
  assert [line.split('|')[1].strip() for line in table[2:]] == ['a_plain',
                                                                'b_mixture']
  report = tmp_path / 'runs' / 'a_plain' / 'robustness.json'
  stamp = os.path.getmtime(report)
  # Trained and attacked already: reused.
  grid_mode.run(base, run_folder.RunFolder(base.output_dir))
  assert os.path.getmtime(report) == stamp
  with open(tmp_path / 'runs' / 'grid.json') as f:
    assert len(json.load(f)['table']) == 2


@pytest.mark.slow
def test_certify_mode_end_to_end(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  base = cli.parse_flagfiles(['flags/smoke.cfg'])
  trained = dataclasses.replace(base, output_dir=str(tmp_path))
  train_mode.run(trained, run_folder.RunFolder(trained.output_dir))
  certify_run = dataclasses.replace(
      trained, mode='certify',
      data=dataclasses.replace(trained.data, eval_examples=4),
      certify=config_lib.CertifyConfig(sigma=0.25, n0=10, n=50, alpha=0.01,
                                       batch_size=50, radii=(0.0, 0.25)))
  certify_mode.run(certify_run, run_folder.RunFolder(certify_run.output_dir))
  with open(tmp_path / 'certify.json') as f:
    result = json.load(f)
  assert result['examples'] == 4 and set(result['certified_accuracy']) == {
      '0.0', '0.25'}
  assert (tmp_path / 'certify.md').read_text().startswith('| L2 radius |')

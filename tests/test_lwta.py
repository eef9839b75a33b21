"""Stochastic LWTA, IBP priors and the ELBO."""

import dataclasses
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta.layers import ibp
from tf_slwta.layers import layout
from tf_slwta.layers import lwta
from tf_slwta.training import optimizer as optimizer_lib
from tf_slwta.training import losses
from tf_slwta.training import variational

tfd = tfp.distributions


def _within_three_standard_errors(closed_form, samples):
  mean = np.mean(samples)
  se = np.std(samples) / np.sqrt(len(samples))
  assert abs(closed_form - mean) <= 3 * se + 1e-6, (closed_form, mean, se)


def test_winner_kl_matches_monte_carlo():
  logits = tf.constant([[2.0, -1.0, 0.5, 0.0], [0.3, 0.1, -0.7, 1.2]])
  closed = lwta.categorical_kl_from_uniform(logits).numpy()
  q = tfd.Categorical(logits=logits)
  draws = q.sample(20000, seed=[1, 2])
  log_ratio = (q.log_prob(draws) - np.log(1 / 4.0)).numpy()
  for i in range(2):
    _within_three_standard_errors(closed[i], log_ratio[:, i])


@pytest.mark.parametrize('a,b,alpha', [(2.127, 1.0, 1.0), (0.7, 3.0, 2.0),
                                       (5.0, 0.8, 0.5)])
def test_kumaraswamy_beta_kl_matches_monte_carlo(a, b, alpha):
  closed = float(ibp.kumaraswamy_beta_kl(tf.constant(a), tf.constant(b), alpha))
  q = tfd.Kumaraswamy(a, b)
  v = tf.clip_by_value(q.sample(50000, seed=[3, 4]), 1e-6, 1 - 1e-6)
  log_ratio = (q.log_prob(v) - tfd.Beta(alpha, 1.0).log_prob(v)).numpy()
  _within_three_standard_errors(closed, log_ratio)
  assert closed >= 0


def test_low_temperature_gives_one_dominant_unit_per_block():
  # Seeded: the shares below are statistics of one draw, ~0.973 on average
  # for the last one, and an unseeded draw depended on the tests before.
  layer = lwta.LWTA(competitors=4, seed=3)
  x = tf.random.stateless_normal([64, 6, 6, 16], seed=[3, 7])
  blocks = layer.blocks(x)  # [64, 6, 6, 4 blocks, 4 competitors].
  winners = layer.winners(blocks, training=False).numpy()
  # Only near-ties of the Gumbel-perturbed responses stay shared.
  assert np.mean(winners.max(-1) > 0.9) > 0.97
  assert np.mean(winners.max(-1) > 0.5) > 0.99
  soft = layer.winners(blocks, training=True).numpy()  # Temperature 0.67.
  assert np.mean(soft.max(-1) > 0.9) < 0.8
  np.testing.assert_allclose(winners.sum(-1), 1.0, atol=1e-5)
  # The layer itself: the winner keeps its raw value, the others are
  # silenced.
  out = layer.blocks(layer(x, training=False)).numpy()
  raw = blocks.numpy()
  winner = np.abs(out).argmax(-1)[..., None]
  keeps_raw = np.abs(np.take_along_axis(out - raw, winner, -1)[..., 0]) < 1e-2
  others = np.abs(out).sum(-1) - np.abs(np.take_along_axis(out, winner, -1)[..., 0])
  assert np.mean(keeps_raw & (others < 1e-2)) > 0.95


def test_channel_k_competes_with_k_plus_c_over_u():
  # Block k of C = U K channels is channels k, k + K, ...: with hard
  # winners each block passes only its largest channel.
  for competitors in (2, 3):
    k = 4
    x = np.zeros([1, competitors * k], np.float32)
    for block in range(k):
      x[0, ((block + 1) % competitors) * k + block] = 1.0 + block
    hard = lwta.LWTA(competitors=competitors, deterministic=True)
    np.testing.assert_array_equal(hard(x, training=False).numpy(), x)
    x_neg = x - 10.0 * (x == 0)  # The losers are now far below.
    np.testing.assert_array_equal(hard(x_neg, training=False).numpy(), x)


def _same_distribution(a, b):
  """Two-sample Kolmogorov-Smirnov test at level 1e-3 (equal sizes).

  Values are rounded to 1e-5 first: saturated winners put atoms at 0 and at
  the raw response, which the two paths' arithmetic rounds differently.
  """
  a, b = np.round(a, 5), np.round(b, 5)
  grid = np.sort(np.concatenate([a, b]))
  cdf = lambda v: np.searchsorted(np.sort(v), grid, side='right') / len(v)
  statistic = np.abs(cdf(a) - cdf(b)).max()
  return statistic <= 1.949 * np.sqrt(2.0 / len(a)), statistic


def _pair_and_general_samples(x, temperature, n, seed):
  """n draws of the U = 2 fast path and of the general path at x `[1, C]`."""
  tiled = tf.tile(x, [n, 1])
  half = x.shape[-1] // 2
  pair, _ = lwta.pair_lwta(
      tiled, lwta.logistic_noise([n, half], [seed, 1]), temperature, False)
  general, _ = lwta.general_lwta(
      tiled, 2, lwta.gumbel_noise([n, 2, half], [seed, 2]), temperature, False)
  return pair.numpy(), general.numpy()


@pytest.mark.parametrize('temperature', [0.67, 0.01, 2.0])
def test_pair_fast_path_equals_the_general_path_in_distribution(temperature):
  x = tf.constant([[0.3, -1.2, 2.0, 0.0, 0.5, 0.9]])
  pair, general = _pair_and_general_samples(x, temperature, 20000, seed=11)
  for channel in range(6):
    same, statistic = _same_distribution(pair[:, channel],
                                         general[:, channel])
    assert same, (channel, statistic)
  # The winner KL of both paths is the same closed form.
  _, kl_pair = lwta.pair_lwta(x, None, 1.0, True)
  _, kl_general = lwta.general_lwta(x, 2, None, 1.0, True)
  np.testing.assert_allclose(kl_pair, kl_general, rtol=1e-5)


def test_pair_fast_path_gradient_is_the_formula_s_gradient():
  # The hand-written gradient against TensorFlow's on the same draws.
  x = tf.random.stateless_normal([3, 4, 4, 6], seed=[1, 2])
  weights = tf.random.stateless_normal([3, 4, 4, 6], seed=[5, 6])
  kl_weights = tf.constant([0.3, -1.0, 2.0])
  for noise in (lwta.logistic_noise([3, 4, 4, 3], [3, 4]), None):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(x)
      out, kl = lwta.pair_lwta(x, noise, 0.67, True)
      fused = tf.reduce_sum(out * weights) + tf.reduce_sum(kl * kl_weights)
      a, b = tf.split(x, 2, -1)
      s = (tf.cast(a >= b, tf.float32) if noise is None
           else tf.sigmoid((a - b + noise) / 0.67))
      ref_out = tf.concat([a * s, b * (1 - s)], -1)
      ref_kl = tf.reduce_sum(tf.reshape(lwta.categorical_kl_from_uniform(
          tf.stack([a, b], -1)), [3, -1]), -1)
      ref = (tf.reduce_sum(ref_out * weights)
             + tf.reduce_sum(ref_kl * kl_weights))
    np.testing.assert_allclose(out, ref_out, atol=1e-6)
    np.testing.assert_allclose(kl, ref_kl, rtol=1e-5)
    np.testing.assert_allclose(tape.gradient(fused, x), tape.gradient(ref, x),
                               atol=1e-5)


def test_pair_winner_kl_is_accurate_for_any_response_gap():
  # The fast path computes KL(Bernoulli(sigmoid(d)) || 1/2) from
  # m = sigmoid(|d|); against the float64 closed form from tiny to huge |d|
  # (where softplus(d) - sigmoid(d) d cancels badly if done naively).
  gaps = np.array([-200, -90, -17, -10, -1, -1e-3, 0, 1e-4, 0.5, 3, 10, 17,
                   90, 200], np.float64)
  x = tf.constant(np.stack([gaps, np.zeros_like(gaps)], -1), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(x)
    _, kl = lwta.pair_lwta(x, None, 1.0, True)
  grad = tape.gradient(kl, x).numpy()
  q = 1.0 / (1.0 + np.exp(-gaps))
  expected = np.log(2.0) - np.logaddexp(0.0, gaps) + q * gaps
  np.testing.assert_allclose(kl.numpy(), expected, atol=1e-6)
  np.testing.assert_allclose(grad[:, 0], gaps * q * (1.0 - q), atol=1e-6)
  np.testing.assert_allclose(grad[:, 1], -grad[:, 0])


@pytest.mark.parametrize('dtype', [tf.float16, tf.bfloat16, tf.float32])
def test_noise_is_finite_symmetric_and_has_the_right_law(dtype):
  # The uniform grid's midpoints: never 0 or 1, the grid symmetric about 1/2.
  logistic = tf.cast(lwta.logistic_noise([100000], [3, 7], dtype),
                     tf.float64).numpy()
  gumbel = tf.cast(lwta.gumbel_noise([100000], [3, 8], dtype),
                   tf.float64).numpy()
  assert np.isfinite(logistic).all() and np.isfinite(gumbel).all()
  assert logistic.min() < 0 < logistic.max()
  # Mean 0 and variance pi^2 / 3; Gumbel mean is the Euler constant (about
  # 5 standard errors; bfloat16's 8-bit grid gives up some of the tails).
  tolerance = 0.1 if dtype == tf.bfloat16 else 0.03
  assert abs(logistic.mean()) < tolerance
  assert abs(logistic.var() - np.pi ** 2 / 3) < 4 * tolerance
  assert abs(gumbel.mean() - np.euler_gamma) < tolerance


def test_general_path_for_three_competitors():
  layer = lwta.LWTA(competitors=3, seed=4)
  x = tf.random.stateless_normal([5, 2, 2, 12], seed=[8, 9])
  layer(x, training=True)
  expected = tf.reduce_mean(tf.reduce_sum(tf.reshape(
      lwta.categorical_kl_from_uniform(layer.blocks(x)), [5, -1]), -1))
  assert float(layer.losses[0]) == pytest.approx(float(expected), rel=1e-5)
  # Hard test-time winners: each block keeps exactly one nonzero unit.
  out = layer.blocks(layer(x, training=False)).numpy()
  assert np.all(np.sum(np.abs(out) > 1e-3 * np.abs(x.numpy()).max(), -1) <= 2)


def test_sampling_stays_on_at_test_unless_deterministic():
  x = tf.random.normal([8, 10])
  stochastic = lwta.LWTA(test_temperature=1.0)
  assert not np.allclose(stochastic(x, training=False),
                         stochastic(x, training=False))
  hard = lwta.LWTA(deterministic=True)
  np.testing.assert_array_equal(hard(x, training=False), hard(x, training=False))
  np.testing.assert_allclose(hard.blocks(hard(x)).numpy().sum(-1),
                             hard.blocks(x).numpy().max(-1))


@pytest.mark.parametrize('make,message', [
    (lambda: lwta.LWTA(competitors=3)(tf.zeros([2, 8])), 'multiple of 3'),
    (lambda: lwta.LWTA(temperature=0.0), 'temperature must be > 0'),
    (lambda: lwta.LWTA(test_temperature=-1.0), 'test_temperature'),
    (lambda: lwta.LWTA(competitors=1), 'competitors'),
    (lambda: ibp.IBPMask(competitors=2)(tf.zeros([2, 9])), 'competitors=2'),
    (lambda: config_lib.TrainConfig(lwta_kl_weight=-1), 'lwta_kl_weight'),
    (lambda: config_lib.TrainConfig(mixture_gradient='mean'),
     'mixture_gradient'),
    (lambda: config_lib.ModelConfig(activation='lwta', lwta_competitors=3),
     'lwta_competitors=3'),
    (lambda: config_lib.ModelConfig(activation='lwta', lwta_temperature=0),
     'lwta_temperature'),
])
def test_bad_settings_are_refused(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def _lwta_model(**overrides):
  settings = dict(activation='lwta', ibp=True, seed_cnn_filters=(8, 16),
                  seed_cnn_units=32)
  cfg = config_lib.ModelConfig(**{**settings, **overrides})
  return models.build_model(cfg, data_lib.dataset_info('synthetic'))


def test_model_losses_hold_the_kl_terms():
  model = _lwta_model()
  x = tf.random.uniform([4, 28, 28, 1])
  model(x, training=True)
  # Three LWTA activations and three IBP masks each add one KL term.
  assert len(model.losses) == 6
  assert all(float(l) >= 0 for l in model.losses)
  winner, global_ = losses.kl_terms(model)
  assert float(winner + global_) == pytest.approx(
      float(tf.add_n(model.losses)), rel=1e-5)
  assert float(global_) == pytest.approx(sum(
      float(l.losses[0]) for l in ibp.ibp_layers(model)), rel=1e-5)
  model(x, training=False)
  assert not model.losses  # KL terms are training-time only.
  # The LWTA term equals the closed form on the layer's own input.
  layer = lwta.LWTA()
  h = tf.random.normal([3, 5, 4])
  layer(h, training=True)
  expected = tf.reduce_mean(tf.reduce_sum(tf.reshape(
      lwta.categorical_kl_from_uniform(layer.blocks(h)), [3, -1]), -1))
  assert float(layer.losses[0]) == pytest.approx(float(expected), rel=1e-5)


def test_objective_weights_the_winner_and_global_kl_apart():
  model = _lwta_model()
  x = tf.random.uniform([4, 28, 28, 1])
  y = tf.constant([0, 1, 2, 3], tf.int64)
  logits = model(x, training=True)
  winner, global_ = losses.kl_terms(model)
  ce = float(losses.replica_loss(model, y, logits, global_batch_size=4))
  total = float(losses.replica_loss(model, y, logits, global_batch_size=4,
                                    winner_kl_weight=0.5,
                                    global_kl_weight=0.01))
  assert total == pytest.approx(
      ce + 0.5 * float(winner) + 0.01 * float(global_), rel=1e-5)
  weights = losses.kl_weights(tf.constant(0), 200, lwta_kl_weight=1.0,
                              ibp_kl_weight=2.0)
  assert [float(w) for w in weights] == pytest.approx([1.0, 0.01])


def test_gradients_reach_weights_and_ibp_parameters():
  model = _lwta_model()
  x = tf.random.uniform([8, 28, 28, 1])
  y = tf.range(8, dtype=tf.int64) % 10
  with tf.GradientTape() as tape:
    logits = model(x, training=True)
    loss = losses.replica_loss(model, y, logits, global_batch_size=8,
                               winner_kl_weight=1e-3,
                               global_kl_weight=1 / 100.0)
  grads = dict(zip([v.path for v in model.trainable_variables],
                   tape.gradient(loss, model.trainable_variables)))
  for name in ('conv1/kernel', 'conv2_ibp/ibp_stick_a',
               'conv2_ibp/ibp_stick_b', 'conv1_ibp/ibp_utility_logits',
               'dense_ibp/ibp_utility_logits', 'dense/kernel',
               'logits/kernel'):
    matches = [g for path, g in grads.items() if path.endswith(name)]
    assert matches and matches[0] is not None, name
    assert float(tf.reduce_sum(tf.abs(matches[0]))) > 0, name


def test_ibp_starts_as_the_reference_and_prunes_to_exact_zeros():
  layer = ibp.IBPMask(competitors=2)
  x = tf.random.normal([2, 5, 5, 8])
  layer(x)
  t = layer.utility_logits.numpy()
  assert np.all((t >= 4.0) & (t <= 5.0))  # sigmoid ~ 0.98-0.99.
  layer.utility_logits.assign([-10.0, 3.0, -10.0, 3.0])
  assert layer.pruned_fraction() == 0.5
  out = layer(x, training=False).numpy()
  pruned_channels = [0, 2, 4, 6]  # Blocks 0 and 2: channels k and k + 4.
  assert np.all(out[..., pruned_channels] == 0.0)
  np.testing.assert_allclose(out[..., [1, 3, 5, 7]],
                             x.numpy()[..., [1, 3, 5, 7]] * tf.sigmoid(3.0),
                             rtol=1e-5)
  fractions = ibp.pruned_fractions(_lwta_model())
  assert set(fractions) == {'conv1_ibp', 'conv2_ibp', 'dense_ibp', 'all'}


@pytest.mark.parametrize('name', ['seed_cnn', 'wide_resnet'])
def test_a_pruned_block_outputs_exact_zeros_in_the_models(name):
  # After BatchNorm (and no bias) a pruned block's channels are exactly 0
  # where they enter the activation and where they leave it.
  model = _lwta_model(name=name, depth=10)
  model(tf.random.uniform([2, 28, 28, 1]), training=True)  # Move BN stats.
  masks = ibp.ibp_layers(model)
  for mask in masks:
    mask.utility_logits.assign(
        tf.where(tf.range(mask.blocks) % 2 == 0, -10.0, 5.0))
  probe = keras.Model(model.input, [m.output for m in masks])
  for mask, out in zip(masks, probe(tf.random.uniform([2, 28, 28, 1]),
                                    training=False)):
    half = mask.blocks
    pruned = [k + u * half for k in range(0, half, 2)
              for u in range(mask.competitors)]
    assert np.all(out.numpy()[..., pruned] == 0.0), mask.name
    kept = [c for c in range(2 * half) if c not in pruned]
    assert np.abs(out.numpy()[..., kept]).max() > 0, mask.name
  assert ibp.pruned_fractions(model)['all'] == 0.5


def test_layers_and_models_save_and_load(tmp_path):
  model = _lwta_model()
  model.get_layer('conv2_ibp').utility_logits.assign(
      tf.fill(model.get_layer('conv2_ibp').utility_logits.shape, -5.0))
  path = str(tmp_path / 'slwta.keras')
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert (json.loads(json.dumps(loaded.get_config())) ==
          json.loads(json.dumps(model.get_config())))
  np.testing.assert_array_equal(loaded.get_layer('conv2_ibp').utility_logits,
                                model.get_layer('conv2_ibp').utility_logits)
  for layer in (lwta.LWTA(competitors=4, temperature=0.5),
                ibp.IBPMask(competitors=3, threshold=0.1,
                            utility_init=(0.1, 1.0))):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_wide_resnet_lwta_replaces_every_activation():
  model = models.build_model(
      config_lib.ModelConfig(name='wide_resnet', depth=10, activation='lwta'),
      data_lib.dataset_info('cifar10'))
  kinds = {type(l).__name__ for l in model.layers}
  assert 'LWTA' in kinds and 'ReLU' not in kinds
  model(tf.random.uniform([2, 32, 32, 3]), training=True)
  assert len(model.losses) == 2 * 3 + 1  # Two per block, and the final one.


def test_elbo_is_the_same_with_one_and_two_replicas():
  x = tf.random.uniform([8, 28, 28, 1], seed=5)
  y = tf.range(8, dtype=tf.int64) % 10
  values = []
  for strategy in (tf.distribute.OneDeviceStrategy('/cpu:0'),
                   tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])):
    keras.utils.set_random_seed(0)
    with strategy.scope():
      # Hard winners and no IBP: the forward pass is deterministic, and the
      # KL (a function of the responses) is still added.
      # BatchNorm off: its batch statistics differ per replica.
      model = _lwta_model(lwta_deterministic=True, ibp=False,
                          seed_cnn_batch_norm=False)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8))

    @tf.function
    def elbo(batch):
      def replica(images, labels):
        logits = model(images, training=True)
        return losses.replica_loss(model, labels, logits,
                                   global_batch_size=8,
                                   winner_kl_weight=0.01)
      return strategy.reduce('SUM', strategy.run(replica, args=batch),
                             axis=None)

    values.append(float(elbo(next(iter(dataset)))))
  assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_kl_annealing_ramps_both_weights():
  weights = lambda step, **kw: [float(w) for w in losses.kl_weights(
      tf.constant(step), 100, lwta_kl_weight=0.1, **kw)]
  assert weights(0) == pytest.approx([0.1, 0.01])
  assert weights(4, anneal_steps=10) == pytest.approx([0.05, 0.005])
  assert weights(50, anneal_steps=10) == pytest.approx([0.1, 0.01])


def test_utility_kl_is_the_bernoulli_kl_in_logs():
  q = np.array([0.2, 0.9, 0.98, 0.5])
  p = np.array([0.5, 0.1, 1e-30, 1e-200])  # The last below float32.
  expected = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
  logits = tf.constant(np.log(q / (1 - q)), tf.float32)
  log_p = tf.constant(np.log(p), tf.float32)
  np.testing.assert_allclose(ibp.bernoulli_kl_logits(logits, log_p), expected,
                             rtol=1e-5)


def test_every_stick_of_a_wide_layer_gets_the_kl_gradient():
  # 256 channels, 128 blocks: the prior pi = v_1 ... v_k of most blocks is
  # far below 1e-6; clipped there, those sticks got no gradient at all.
  layer = ibp.IBPMask(competitors=2, seed=0)
  layer.build((None, 256))
  with tf.GradientTape() as tape:
    kl = layer.kl()
  grads = tape.gradient(kl, [layer.stick_a, layer.stick_b])
  assert np.isfinite(float(kl))
  for grad in grads:
    assert np.all(np.isfinite(grad)) and np.all(grad.numpy() != 0.0)


def _train_losses(model_config, steps=40, learning_rate=0.05, seed=0):
  """Losses of `steps` quickstart-style SGD steps (momentum 0.9, weight
  decay 5e-4, constant rate) on 512 synthetic images, batches of 128."""
  keras.utils.set_random_seed(seed)
  images, labels = data_lib.make_synthetic('train', 512)
  images = tf.cast(images, tf.float32) / 255.0
  model = models.build_model(model_config, data_lib.dataset_info('synthetic'))
  optimizer = optimizer_lib.make_optimizer(config_lib.TrainConfig(
      epochs=1, learning_rate=learning_rate, lr_schedule='constant'), steps)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      loss = losses.replica_loss(model, y, model(x, training=True),
                                 global_batch_size=128, winner_kl_weight=1e-3)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  result = []
  for i in range(steps):
    start = (i * 128) % 512
    result.append(float(step(images[start:start + 128],
                             labels[start:start + 128])))
  return np.array(result)


@pytest.mark.slow
def test_lwta_seed_cnn_trains_at_the_quickstart_learning_rate():
  # The cause of the divergence this guards (BENCHMARKS.md): without
  # normalization the first SGD steps at 0.05 overshoot; ReLU recovers as
  # units die, an LWTA block always passes a response of either sign and
  # the overshoot grows into NaN (here within 40 steps). With a BatchNorm
  # before each competition (the default with LWTA) the loss only falls.
  lwta_config = config_lib.ModelConfig(activation='lwta')
  normalized = _train_losses(lwta_config)
  assert np.all(np.isfinite(normalized))
  assert normalized.max() <= normalized[0] + 1e-3
  assert normalized[-5:].mean() < 0.5 * normalized[0]
  bare = _train_losses(dataclasses.replace(lwta_config,
                                           seed_cnn_batch_norm=False))
  assert not np.all(np.isfinite(bare)) or bare.max() > 100.0
  relu = _train_losses(config_lib.ModelConfig(activation='relu'))
  assert np.all(np.isfinite(relu)) and relu.max() > 2 * relu[0]  # Recovers.


def test_checkpoints_of_the_old_channel_layout_are_refused(tmp_path):
  model = _lwta_model()
  old = tf.train.Checkpoint(model=model).save(str(tmp_path / 'old' / 'ckpt'))
  with pytest.raises(layout.LayoutMismatch, match='layout 1.*new --output_dir'):
    layout.check_checkpoint(old, model)
  new = tf.train.Checkpoint(model=model, **layout.checkpoint_objects(
      model)).save(str(tmp_path / 'new' / 'ckpt'))
  layout.check_checkpoint(new, model)
  # Models without LWTA or IBP layers: their checkpoints are unchanged.
  plain = models.build_model(config_lib.ModelConfig(),
                             data_lib.dataset_info('synthetic'))
  assert not layout.checkpoint_objects(plain)
  layout.check_checkpoint(tf.train.Checkpoint(model=plain).save(
      str(tmp_path / 'plain' / 'ckpt')), plain)


def test_ibp_parameters_have_their_own_optimizer_and_no_weight_decay():
  model = _lwta_model()
  model(tf.zeros([1, 28, 28, 1]))
  weights, ibp_vars = variational.split_variables(model)
  assert {v.name for v in ibp_vars} == set(ibp.VARIABLE_NAMES)
  assert len(ibp_vars) == 9 and len(weights) + 9 == len(
      model.trainable_variables)
  optimizer = optimizer_lib.make_optimizer(
      config_lib.TrainConfig(epochs=1, weight_decay=0.1), 10)
  optimizer.build(weights)
  ibp_optimizer = variational.make_ibp_optimizer(0.01, ibp_vars)
  before = [v.numpy().copy() for v in model.trainable_variables]
  zeros = [tf.zeros_like(v) for v in model.trainable_variables]
  variational.apply_gradients(optimizer, ibp_optimizer, zeros,
                              model.trainable_variables, ibp_vars)
  ids = {id(v) for v in ibp_vars}
  for v, old in zip(model.trainable_variables, before):
    if id(v) in ids:  # Adam, no decay: a zero gradient leaves them be.
      np.testing.assert_array_equal(v.numpy(), old)
    elif v.name == 'kernel':  # SGD with decay shrinks the weights.
      assert np.abs(v.numpy()).sum() < np.abs(old).sum()
  # A gradient as small as the IBP KL / N gives (1e-4) still moves the
  # utilities by about the learning rate: Adam's step ignores the scale.
  tiny = [tf.fill(tf.shape(v), 1e-4) for v in model.trainable_variables]
  variational.apply_gradients(optimizer, ibp_optimizer, tiny,
                              model.trainable_variables, ibp_vars)
  t = model.get_layer('conv1_ibp').utility_logits
  old = before[[id(v) for v in model.trainable_variables].index(id(t))]
  moved = old - t.numpy()
  assert np.all((moved > 0.005) & (moved <= 0.0101)), moved


def test_attacks_can_sample_at_the_training_temperature():
  layer = lwta.LWTA(seed=8)
  x = tf.random.stateless_normal([64, 32], seed=[4, 5])
  ratio = lambda out: np.abs(out) / (np.abs(x.numpy()) + 1e-6)
  hard = ratio(layer(x, training=False).numpy())
  with lwta.sampling_at_training_temperature():
    soft = ratio(layer(x, training=False).numpy())
  saturated = lambda r: np.mean((r < 0.02) | (r > 0.98))
  assert saturated(hard) > 0.95 and saturated(soft) < 0.8
  assert saturated(ratio(layer(x, training=False).numpy())) > 0.95  # Reset.

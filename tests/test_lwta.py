"""Stochastic LWTA, IBP priors and the ELBO."""

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
from tf_slwta.layers import lwta
from tf_slwta.training import losses

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
  blocks = tf.reshape(x, [64, 6, 6, 4, 4])
  winners = layer.winners(blocks, training=False).numpy()
  # Only near-ties of the Gumbel-perturbed responses stay shared.
  assert np.mean(winners.max(-1) > 0.9) > 0.97
  assert np.mean(winners.max(-1) > 0.5) > 0.99
  soft = layer.winners(blocks, training=True).numpy()  # Temperature 0.67.
  assert np.mean(soft.max(-1) > 0.9) < 0.8
  np.testing.assert_allclose(winners.sum(-1), 1.0, atol=1e-5)
  # The winner keeps its raw value, the others are silenced.
  out = tf.reshape(layer(x, training=False), [64, 6, 6, 4, 4]).numpy()
  raw = blocks.numpy()
  winner = np.abs(out).argmax(-1)[..., None]
  keeps_raw = np.abs(np.take_along_axis(out - raw, winner, -1)[..., 0]) < 1e-2
  others = np.abs(out).sum(-1) - np.abs(np.take_along_axis(out, winner, -1)[..., 0])
  assert np.mean(keeps_raw & (others < 1e-2)) > 0.95


def test_sampling_stays_on_at_test_unless_deterministic():
  x = tf.random.normal([8, 10])
  stochastic = lwta.LWTA(test_temperature=1.0)
  assert not np.allclose(stochastic(x, training=False),
                         stochastic(x, training=False))
  hard = lwta.LWTA(deterministic=True)
  np.testing.assert_array_equal(hard(x, training=False), hard(x, training=False))
  blocks = x.numpy().reshape(8, 5, 2)
  np.testing.assert_allclose(hard(x).numpy().reshape(8, 5, 2).sum(-1),
                             blocks.max(-1))


@pytest.mark.parametrize('make,message', [
    (lambda: lwta.LWTA(competitors=3)(tf.zeros([2, 8])), 'multiple of 3'),
    (lambda: lwta.LWTA(temperature=0.0), 'temperature must be > 0'),
    (lambda: lwta.LWTA(test_temperature=-1.0), 'test_temperature'),
    (lambda: lwta.LWTA(competitors=1), 'competitors'),
    (lambda: ibp.IBPDense(9, competitors=2)(tf.zeros([2, 4])), 'competitors=2'),
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
  # Three LWTA activations and three IBP layers each add one KL term.
  assert len(model.losses) == 6
  assert all(float(l) >= 0 for l in model.losses)
  model(x, training=False)
  assert not model.losses  # KL terms are training-time only.
  # The LWTA term equals the closed form on the layer's own input.
  layer = lwta.LWTA()
  h = tf.random.normal([3, 5, 4])
  layer(h, training=True)
  expected = tf.reduce_mean(tf.reduce_sum(tf.reshape(
      lwta.categorical_kl_from_uniform(tf.reshape(h, [3, 5, 2, 2])), [3, -1]), -1))
  assert float(layer.losses[0]) == pytest.approx(float(expected), rel=1e-5)


def test_gradients_reach_weights_and_ibp_parameters():
  model = _lwta_model()
  x = tf.random.uniform([8, 28, 28, 1])
  y = tf.range(8, dtype=tf.int64) % 10
  with tf.GradientTape() as tape:
    logits = model(x, training=True)
    loss = losses.replica_loss(model, y, logits, global_batch_size=8,
                               kl_scale=1 / 100.0)
  grads = dict(zip([v.path for v in model.trainable_variables],
                   tape.gradient(loss, model.trainable_variables)))
  for name in ('conv1/kernel', 'conv2/ibp_stick_a', 'conv2/ibp_stick_b',
               'conv1/ibp_utility_logits', 'dense/ibp_utility_logits',
               'dense/kernel', 'logits/kernel'):
    matches = [g for path, g in grads.items() if path.endswith(name)]
    assert matches and matches[0] is not None, name
    assert float(tf.reduce_sum(tf.abs(matches[0]))) > 0, name


def test_ibp_prunes_blocks_under_the_threshold():
  layer = ibp.IBPConv2D(8, 3, competitors=2, padding='same')
  x = tf.random.normal([2, 5, 5, 3])
  layer(x)
  layer.utility_logits.assign([-10.0, 3.0, -10.0, 3.0])
  assert layer.pruned_fraction() == 0.5
  out = layer(x, training=False).numpy()
  pruned_channels = [0, 1, 4, 5]  # Blocks 0 and 2, two units each.
  np.testing.assert_allclose(out[..., pruned_channels], 0.0, atol=1e-6)
  assert np.abs(out[..., [2, 3, 6, 7]]).max() > 0
  model = _lwta_model()
  fractions = ibp.pruned_fractions(model)
  assert set(fractions) == {'conv1', 'conv2', 'dense', 'all'}


def test_layers_and_models_save_and_load(tmp_path):
  model = _lwta_model()
  model.get_layer('conv2').utility_logits.assign(
      tf.fill(model.get_layer('conv2').utility_logits.shape, -5.0))
  path = str(tmp_path / 'slwta.keras')
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert (json.loads(json.dumps(loaded.get_config())) ==
          json.loads(json.dumps(model.get_config())))
  np.testing.assert_array_equal(loaded.get_layer('conv2').utility_logits,
                                model.get_layer('conv2').utility_logits)
  for layer in (lwta.LWTA(competitors=4, temperature=0.5),
                ibp.IBPDense(6, competitors=3, threshold=0.1)):
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
      model = _lwta_model(lwta_deterministic=True, ibp=False)
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(8))

    @tf.function
    def elbo(batch):
      def replica(images, labels):
        logits = model(images, training=True)
        return losses.replica_loss(model, labels, logits,
                                   global_batch_size=8, kl_scale=0.01)
      return strategy.reduce('SUM', strategy.run(replica, args=batch),
                             axis=None)

    values.append(float(elbo(next(iter(dataset)))))
  assert values[0] == pytest.approx(values[1], rel=1e-5)


def test_kl_annealing_ramps_to_one_over_n():
  assert float(losses.kl_scale(tf.constant(0), 100)) == pytest.approx(0.01)
  assert float(losses.kl_scale(tf.constant(4), 100, anneal_steps=10)) == (
      pytest.approx(0.005))
  assert float(losses.kl_scale(tf.constant(50), 100, anneal_steps=10)) == (
      pytest.approx(0.01))


def test_utility_kl_is_the_bernoulli_kl():
  q, p = tf.constant([0.2, 0.9]), tf.constant([0.5, 0.1])
  expected = (q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))).numpy()
  np.testing.assert_allclose(ibp.bernoulli_kl(q, p), expected, rtol=1e-5)

"""Seeds of the stochastic layers: per replica, and kept in checkpoints."""

import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta.layers import randomness
from tf_slwta.layers.lwta import LWTA
from tf_slwta.training import state as state_lib

import keras

TWO_REPLICAS = lambda: tf.distribute.MirroredStrategy(
    ['/cpu:0', '/cpu:1'], cross_device_ops=tf.distribute.ReductionToOneDevice())


def test_replicas_draw_their_own_winners_and_stay_in_step():
  strategy = TWO_REPLICAS()
  with strategy.scope():
    layer = LWTA(temperature=0.67, seed=3)
    layer.build((None, 64))
    shared = keras.random.SeedGenerator(5)
  x = tf.random.stateless_normal([4, 64], [1, 2])

  @tf.function
  def step():
    def replica_fn():
      return (layer(x, training=True),
              randomness.next_seed(shared, per_replica=False))
    return strategy.run(replica_fn)

  outputs, seeds = step()
  a, b = strategy.experimental_local_results(outputs)
  assert not np.allclose(a, b)  # Each replica its own winners...
  s0, s1 = strategy.experimental_local_results(seeds)
  np.testing.assert_array_equal(s0, s1)  # ...unless asked to agree.
  states = [v.numpy() for v in strategy.experimental_local_results(
      layer.seed_generator.state.value)]
  np.testing.assert_array_equal(states[0], states[1])  # In step for saving.


def test_one_replica_keeps_the_generator_stream():
  generator = keras.random.SeedGenerator(11)
  reference = keras.random.SeedGenerator(11)
  np.testing.assert_array_equal(randomness.next_seed(generator),
                                tf.cast(reference.next(), tf.int32))


def test_seed_states_are_checkpointed_and_restored(tmp_path):
  config = config_lib.ExperimentConfig(
      output_dir=str(tmp_path),
      data=config_lib.DataConfig(dataset='synthetic'),
      model=config_lib.ModelConfig(seed_cnn_filters=(4, 8), seed_cnn_units=16,
                                   activation='lwta', ibp=True, pni='activation'))
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  state = state_lib.build_training_state(config, strategy, steps_per_epoch=4)
  seeds = randomness.seed_states(state.model)
  # 3 LWTA + 3 IBP + 3 activation noises, each with its own stream.
  assert len(seeds) == 9
  for variable in seeds.values():
    variable.assign(variable + [0, 17])
  saved = {k: v.numpy().copy() for k, v in seeds.items()}
  state.manager.save(checkpoint_number=4)
  names = [n for n, _ in tf.train.list_variables(state.manager.latest_checkpoint)]
  assert sum(n.startswith('seeds/') for n in names) == len(seeds)
  again = state_lib.build_training_state(config, strategy, steps_per_epoch=4)
  for key, variable in randomness.seed_states(again.model).items():
    np.testing.assert_array_equal(variable.numpy(), saved[key])

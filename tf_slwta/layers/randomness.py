"""Where every stochastic layer gets the seed of its next draw.

Layers keep a `keras.random.SeedGenerator` (its state is a variable of the
layer) and ask `next_seed` for a stateless seed per draw, then draw with
`tf.random.stateless_*` ops or TFP's `sample(seed=...)`. Keeping this in one
place lets the training loop make draws differ per replica and survive a
resume without touching each layer.
"""

import keras
import tensorflow as tf


def next_seed(generator: keras.random.SeedGenerator) -> tf.Tensor:
  """int32 `[2]` stateless seed of one draw; advances `generator`.

  Args:
    generator: the layer's own seed generator.

  Returns:
    int32 `[2]`, different on every call (in eager mode and inside a
    `tf.function` alike).
  """
  return tf.cast(generator.next(), tf.int32)

"""Which channels form an LWTA / IBP block, as recorded in checkpoints.

Since `lwta.LAYOUT_VERSION` 2, competitor u of block k is channel u * K + k
(channel k against k + C/2 for U = 2), in `lwta.LWTA` and `ibp.IBPMask`
alike. Checkpoints made before that paired consecutive channels and had IBP
masks on kernels: their weights would load into the new model (or fail to,
with an unhelpful message) and compute something else. Checkpoints of
models with LWTA or IBP layers therefore carry a `channel_layout` entry, and
`check_checkpoint` refuses one without it, saying what to do.
"""

from typing import Dict

import keras
import tensorflow as tf

from tf_slwta.layers import ibp
from tf_slwta.layers import lwta


class LayoutMismatch(ValueError):
  """A checkpoint was made with another channel layout of the blocks."""


def uses_blocks(model: keras.Model) -> bool:
  """Whether the model has LWTA or IBP layers (whose meaning the layout sets)."""
  return bool(lwta.lwta_layers(model) or ibp.ibp_layers(model))


def checkpoint_objects(model: keras.Model) -> Dict[str, tf.Variable]:
  """Extra objects for a model's `tf.train.Checkpoint`.

  Returns:
    {'channel_layout': int64 scalar variable holding `lwta.LAYOUT_VERSION`}
    for a model with blocks, else {} (so plain models' checkpoints are
    unchanged).
  """
  if not uses_blocks(model):
    return {}
  return {lwta.LAYOUT_CHECKPOINT_KEY: tf.Variable(
      lwta.LAYOUT_VERSION, dtype=tf.int64, trainable=False,
      name=lwta.LAYOUT_CHECKPOINT_KEY)}


def check_checkpoint(path: str, model: keras.Model) -> None:
  """Refuses a checkpoint whose block layout is not the model's.

  Args:
    path: a checkpoint prefix (as `tf.train.latest_checkpoint` returns).
    model: the model about to be restored from it.

  Raises:
    LayoutMismatch: the model has LWTA or IBP layers and the checkpoint
      records no layout, or another one.
  """
  if not uses_blocks(model):
    return
  key = f'{lwta.LAYOUT_CHECKPOINT_KEY}/.ATTRIBUTES/VARIABLE_VALUE'
  names = {name for name, _ in tf.train.list_variables(path)}
  version = (int(tf.train.load_variable(path, key)) if key in names else 1)
  if version != lwta.LAYOUT_VERSION:
    raise LayoutMismatch(
        f'{path} was made with LWTA/IBP channel layout {version} (competitors '
        f'on consecutive channels, IBP masks on kernels); this version uses '
        f'layout {lwta.LAYOUT_VERSION} (channel k competes with k + C/U, IBP '
        f'masks after normalization), so those weights would mean something '
        f'else. Retrain the run into a new --output_dir (or with tf_slwta '
        f'before layout {lwta.LAYOUT_VERSION} to use this checkpoint).')

"""Pieces shared by the model builders."""

from typing import Sequence

import keras


def normalization(mean: Sequence[float], std: Sequence[float]) -> keras.layers.Layer:
  """The per-channel standardization layer every model starts with.

  Args:
    mean, std: per-channel pixel statistics in [0, 1] units (std > 0).

  Returns:
    `keras.layers.Normalization` computing (x - mean) / std on `[..., C]`.
  """
  return keras.layers.Normalization(
      mean=list(mean), variance=[s * s for s in std], name='normalize')

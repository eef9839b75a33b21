"""Differentiable surrogates of the stochastic layers, for adaptive attacks.

A stochastic layer's sampled output can have a useless input gradient: at
the LWTA test temperature (0.01) the relaxed winner is a one-hot almost
everywhere, so a pass's gradient is the 0/1 winner mask with rare spikes of
size h / (4 T), and averaging a few such passes (EOT) is mostly noise. An
adaptive attacker (Athalye et al., 2018; Tramer et al., 2020) differentiates
a smooth stand-in of the layer instead. The layers offer two:

  'expected'          the forward pass itself uses the layer's expectation
                      over its randomness where that is cheap (LWTA: each
                      unit times its winning probability; noise layers: no
                      noise, the noise's mean): a deterministic model.
  'straight_through'  the forward pass samples as usual, the backward pass
                      uses the expectation's gradient (BPDA).

The default, 'sample', is the layer as trained and served. The attacks never
special-case a layer: they take a separate logits function for their
gradients, built with `surrogate_logits_fn`, while the decision (what counts
as a success) always uses the model as it is.

The mode is read when a layer's `call` is traced, so a `tf.function` traced
inside the context keeps the mode it was traced with.
"""

import contextlib
import threading
from typing import Callable, Iterator

import tensorflow as tf

MODES = ('sample', 'expected', 'straight_through')

_state = threading.local()


def current() -> str:
  """The surrogate mode in force in this thread: one of `MODES`."""
  return getattr(_state, 'mode', 'sample')


@contextlib.contextmanager
def gradient_surrogate(mode: str) -> Iterator[None]:
  """Runs the block with the stochastic layers in `mode` (one of `MODES`)."""
  if mode not in MODES:
    raise ValueError(f'surrogate mode {mode!r} is not supported; choose one '
                     f'of {", ".join(MODES)}.')
  previous = current()
  _state.mode = mode
  try:
    yield
  finally:
    _state.mode = previous


def surrogate_logits_fn(logits_fn: Callable[[tf.Tensor], tf.Tensor],
                        mode: str) -> Callable[[tf.Tensor], tf.Tensor]:
  """`logits_fn` with the stochastic layers in `mode` while it runs.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`, calling a model
      built from tf_slwta layers.
    mode: one of `MODES`; 'sample' returns `logits_fn` itself.

  Returns:
    A new callable of the same signature (keep it: compiled attacks are
    cached per callable).
  """
  if mode not in MODES:
    raise ValueError(f'surrogate mode {mode!r} is not supported; choose one '
                     f'of {", ".join(MODES)}.')
  if mode == 'sample':
    return logits_fn

  def wrapped(x):
    with gradient_surrogate(mode):
      return logits_fn(x)

  wrapped.surrogate = mode
  return wrapped


def straight_through(sampled: tf.Tensor, expected: tf.Tensor) -> tf.Tensor:
  """The value of `sampled` with the gradient of `expected` (same shapes)."""
  return expected + tf.stop_gradient(sampled - expected)

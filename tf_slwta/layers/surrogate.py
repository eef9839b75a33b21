"""Differentiable surrogates of the stochastic layers, for adaptive attacks.

A stochastic layer's sampled output can have a useless input gradient: at
the LWTA test temperature (0.01) the relaxed winner is a one-hot almost
everywhere, so a pass's gradient is the 0/1 winner mask with rare spikes of
size h / (4 T), and averaging a few such passes (EOT) is mostly noise. An
adaptive attacker (Athalye et al., 2018; Tramer et al., 2020) differentiates
a stand-in of the layer instead. The layers offer these modes:

  'sample'                the layer as trained and served (the default).
  'expected'              the forward pass itself uses the layer's
                          expectation over its randomness where that is
                          cheap (LWTA: each unit times its winning
                          probability; noise layers: the noise's mean): a
                          deterministic model.
  'straight_through'      the forward pass samples as usual, the backward
                          pass uses the expectation's gradient (BPDA).
  'training_temperature'  LWTA samples its winners at the training
                          temperature (0.67), where a pass's gradient is
                          informative; other layers as in 'sample'.
  'soft_temperature'      LWTA samples at the geometric mean of its training
                          and test temperatures (0.08 for 0.67 and 0.01).

The attacks never special-case a layer: they take a separate logits
function for their gradients, built with `surrogate_logits_fn`, while the
decision (what counts as a success) always uses the model as it is.

The mode is read when a layer's `call` is traced, so a `tf.function` traced
inside the context keeps the mode it was traced with. A layer reads it with
`current(supported)`, which also records that a mode changed something:
`responsive_modes` finds with one probe call which modes change a model at
all (a model without this project's layers ignores every mode but
'sample', and attacking it in the others would repeat one attack).
"""

import contextlib
import threading
from typing import Callable, Iterator, List, Sequence, Set

import tensorflow as tf

MODES = ('sample', 'expected', 'straight_through', 'training_temperature',
         'soft_temperature')
# What a layer without temperatures (noise injection) offers.
EXPECTATION_MODES = ('sample', 'expected', 'straight_through')

_state = threading.local()


def current(supported: Sequence[str] = MODES) -> str:
  """The surrogate mode in force in this thread, as a layer applies it.

  Args:
    supported: the modes the calling layer implements; any other mode is
      'sample' for it.

  Returns:
    One of `supported`. A mode other than 'sample' is recorded for
    `recording` as applied.
  """
  mode = getattr(_state, 'mode', 'sample')
  if mode not in supported:
    return 'sample'
  applied = getattr(_state, 'applied', None)
  if applied is not None and mode != 'sample':
    applied.add(mode)
  return mode


@contextlib.contextmanager
def recording() -> Iterator[Set[str]]:
  """Collects, in the yielded set, the modes layers applied in the block."""
  previous = getattr(_state, 'applied', None)
  _state.applied = set()
  try:
    yield _state.applied
  finally:
    if previous is not None:
      previous |= _state.applied
    _state.applied = previous


def responsive_modes(logits_fn: Callable[[tf.Tensor], tf.Tensor],
                     modes: Sequence[str], probe: tf.Tensor) -> List[str]:
  """Those of `modes` that change `logits_fn`: 'sample' and each mode some
  layer applied in a probe call (eager calls of Keras models run the
  layers' Python; a `logits_fn` compiled as a whole hides them, and then
  only 'sample' is found).

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    modes: candidate modes, from `MODES`.
    probe: float32 images `[b, H, W, C]`, a few are enough.
  """
  found = []
  for mode in modes:
    if mode == 'sample':
      found.append(mode)
      continue
    with recording() as applied:
      surrogate_logits_fn(logits_fn, mode)(probe)
    if mode in applied:
      found.append(mode)
  return found


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

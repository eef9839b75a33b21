"""How one image is scored: repeated decisions, the worst candidate, a row.

A stochastic model answers differently on every pass, so a verdict is a
set of `repeats` decisions (each the argmax of `mc_samples` passes); the
attacker's candidates for an image (the clean image and each attack's
output) are compared by those verdicts, and a row's accuracy is the mean
over images and repeats, with the repeats' spread as its Monte Carlo
standard error.
"""

import dataclasses
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta.attacks import common as attack_common


def decide_repeated(logits_fn: attacks.eot.LogitsFn, x, y: np.ndarray,
                    mc_samples: int, repeats: int, block: int = 0,
                    z: float = 3.5, passes: Optional[List[float]] = None):
  """`repeats` fresh decisions on the same images.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    x: float32 images `[B, H, W, C]`.
    y: int labels `[B]`.
    mc_samples: passes per decision, >= 1.
    repeats: decisions, >= 1.
    block: 0 draws every decision's mc_samples passes; > 0 draws them that
      many at a time and stops once the answer is settled at `z` standard
      errors (`attacks.eot.settled_probabilities`).
    z: see `block`.
    passes: if given, each decision's mean passes per image is appended.

  Returns:
    (bool `[repeats, B]`: decision r is right; float32 `[B, K]`: the mean
    probabilities over every decision (each decision's own mean weighted
    equally)).
  """
  oks, total = [], 0.0
  for _ in range(repeats):
    if block and mc_samples > block:
      probs, used = attacks.eot.settled_probabilities(logits_fn, x,
                                                      mc_samples, block, z)
      probs, used = probs.numpy(), used.numpy()
    else:
      probs = attacks.eot.compiled_mean_probabilities(
          logits_fn, tf.convert_to_tensor(x), mc_samples).numpy()
      used = np.full(len(probs), mc_samples)
    if passes is not None:
      passes.append(float(np.mean(used)))
    oks.append(probs.argmax(axis=-1) == y)
    total = total + probs
  return np.stack(oks), (total / repeats).astype(np.float32)


def _margin(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
  """log p_y - max_{i != y} log p_i per example; lower is worse for the model."""
  return attack_common.log_probability_margin(
      tf.constant(probs), tf.constant(y, tf.int64)).numpy()


def nearest_first(ok: np.ndarray, probs: np.ndarray,
                  y: np.ndarray) -> np.ndarray:
  """Example indices `[B]`, those nearest the decision boundary first.

  Args:
    ok: bool `[R, B]`, each example's repeated decisions are right.
    probs: float `[B, K]`, its mean decision probabilities.
    y: int labels `[B]` in [0, K).

  Returns:
    int `[B]`: fewest right decisions first, then the lowest margin
    log p_y - max_{i != y} log p_i (the order of `Candidates.worst`).
  """
  return np.lexsort((_margin(probs, y), ok.mean(axis=0)))


@dataclasses.dataclass
class Row:
  """One table row's per-image outcomes, batch after batch."""
  ok: List[np.ndarray] = dataclasses.field(default_factory=list)  # [R, b]
  l2: List[np.ndarray] = dataclasses.field(default_factory=list)  # [b]
  linf: List[np.ndarray] = dataclasses.field(default_factory=list)  # [b]

  def add(self, ok: np.ndarray, l2: np.ndarray, linf: np.ndarray) -> None:
    """Appends a batch: ok bool `[R, b]`, perturbation norms `[b]`."""
    self.ok.append(ok)
    self.l2.append(l2)
    self.linf.append(linf)


def summarize(ok: np.ndarray, l2: np.ndarray, linf: np.ndarray,
              natural_ok: Optional[np.ndarray] = None) -> Dict[str, object]:
  """A row's numbers from per-image, per-repeat outcomes.

  Args:
    ok: bool `[R, N]`, decision r on the image scored (for an attack, its
      worst candidate) is right.
    l2, linf: float `[N]`, the scored images' perturbation norms.
    natural_ok: bool `[R', N]`, the clean row's outcomes; None for the
      clean row itself (no attack columns).

  Returns:
    {'accuracy': mean over images and repeats, 'mc_se': standard error of
    that mean over the R repeats (0 for R = 1), 'image_se': sqrt(p (1 - p) /
    N), 'success_rate' in [0, 1]: among the images the model gets right
    when clean (right in at least half of its clean decisions), the mean
    share of decisions the attack turned wrong (None for the clean row, or
    when no image is right), 'median_l2' of the perturbed images wrong in
    more than half the repeats (None if none), 'max_linf'}.
  """
  repeats, n = ok.shape
  per_repeat = ok.mean(axis=1)
  accuracy = float(per_repeat.mean())
  broken = (ok.mean(axis=0) < 0.5) & (l2 > 0)
  success = None
  if natural_ok is not None:
    right = natural_ok.mean(axis=0) >= 0.5
    if right.any():
      success = float(1.0 - ok.mean(axis=0)[right].mean())
  return {
      'accuracy': accuracy,
      'mc_se': (float(per_repeat.std(ddof=1) / np.sqrt(repeats))
                if repeats > 1 else 0.0),
      'image_se': float(np.sqrt(accuracy * (1 - accuracy) / max(n, 1))),
      'success_rate': success,
      'median_l2': float(np.median(l2[broken])) if broken.any() else None,
      'max_linf': float(linf.max(initial=0.0)),
  }


@dataclasses.dataclass
class Candidates:
  """Images an attacker may submit for one batch, with their verdicts.

  Attributes:
    images: [float32 `[B, H, W, C]`], the clean batch first.
    ok: [bool `[R, B]`], each one's repeated decisions are right.
    probs: [float32 `[B, K]`], each one's mean decision probabilities.
  """
  images: List[np.ndarray]
  ok: List[np.ndarray]
  probs: List[np.ndarray]

  def add(self, images: np.ndarray, ok: np.ndarray, probs: np.ndarray):
    self.images.append(images)
    self.ok.append(ok)
    self.probs.append(probs)

  def worst(self, y: np.ndarray):
    """Per image, the candidate judged worst for the model.

    Fewest right decisions first, then the lowest margin log p_y -
    max_{i != y} log p_i. Returns (images `[B, H, W, C]`, ok `[R, B]`,
    probs `[B, K]`) of the picks.
    """
    right = np.stack([ok.mean(axis=0) for ok in self.ok])
    margins = np.stack([_margin(p, y) for p in self.probs])
    pick = np.lexsort((margins, right), axis=0)[0]
    columns = np.arange(len(y))
    ok = np.stack(self.ok)[pick, :, columns].T
    return (np.stack(self.images)[pick, columns], ok,
            np.stack(self.probs)[pick, columns])

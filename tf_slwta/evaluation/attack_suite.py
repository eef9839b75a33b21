"""The configured attacks as runnable variants, one per gradient mode.

A gradient attack on a stochastic model runs once per gradient mode
(`layers.surrogate`): 'sample' follows the EOT average of sampled passes,
'expected' the layers' expectation, 'straight_through' sampled passes with
the expectation's gradient. The model's decision always judges. Square
(no gradient) and transfer (another model's gradient) run once.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta.attacks import eot
from tf_slwta.layers import surrogate

# attack(images, labels, seed) -> adversarial images of the same shape.
AttackFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One runnable attack: `name` (the table row), `mode` ('' when the attack
  takes no gradient of the model), `run(images, labels, seed)`, and for an
  attack outside `config.ATTACKS` its `settings` text."""
  name: str
  mode: str
  run: AttackFn
  settings: str = ''

  @property
  def label(self) -> str:
    """'pgd_linf' or 'pgd_linf/expected', as progress and logs show it."""
    return f'{self.name}/{self.mode}' if self.mode else self.name


def is_stochastic(logits_fn: eot.LogitsFn, images: tf.Tensor) -> bool:
  """Whether two passes of the model on the same images differ.

  Args:
    logits_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    images: float32 `[B, H, W, C]` in [0, 1], a few are enough.

  Returns:
    True when any logit differs between two passes.
  """
  first, second = logits_fn(images), logits_fn(images)
  return bool(tf.reduce_any(tf.not_equal(first, second)))


def deterministic_modes(logits_fn: eot.LogitsFn, modes: Sequence[str],
                        images: tf.Tensor) -> List[str]:
  """The modes whose surrogate of `logits_fn` gives the same pass twice."""
  return [mode for mode in modes if not is_stochastic(
      surrogate.surrogate_logits_fn(logits_fn, mode), images)]


def resolve_modes(cfg: config_lib.AttackConfig, stochastic: bool) -> List[str]:
  """The gradient modes to run: cfg.gradient_modes, or for ('auto',) every
  mode on a stochastic model and 'sample' on a deterministic one."""
  if tuple(cfg.gradient_modes) != ('auto',):
    return list(cfg.gradient_modes)
  return list(config_lib.GRADIENT_MODES) if stochastic else ['sample']


def _gradient_attack(name: str, logits_fn, gradient_fn,
                     cfg: config_lib.AttackConfig,
                     num_classes: int) -> AttackFn:
  """attack(x, y, seed) for a gradient attack following `gradient_fn`."""
  common = dict(eot_samples=cfg.eot_samples, gradient_fn=gradient_fn)
  decided = dict(mc_samples=cfg.mc_samples, **common)
  pgd = dict(steps=cfg.pgd_steps, restarts=cfg.pgd_restarts,
             random_start=cfg.pgd_random_start, **decided)
  aa = dict(norm=cfg.aa_norm, steps=cfg.apgd_steps, **decided)
  table = {
      'fgsm': lambda x, y, s: attacks.fgsm(logits_fn, x, y, cfg.fgsm_eps,
                                           **common),
      'pgd_linf': lambda x, y, s: attacks.pgd(
          logits_fn, x, y, cfg.pgd_eps, cfg.pgd_alpha, norm='inf', seed=s,
          **pgd),
      'pgd_l2': lambda x, y, s: attacks.pgd(
          logits_fn, x, y, cfg.pgd_l2_eps, cfg.pgd_l2_alpha, norm=2, seed=s,
          **pgd),
      'cw': lambda x, y, s: attacks.carlini_wagner_l2(
          logits_fn, x, y, c=cfg.cw_c, kappa=cfg.cw_kappa, steps=cfg.cw_steps,
          binary_search_steps=cfg.cw_binary_search_steps,
          learning_rate=cfg.cw_learning_rate, **decided),
      'apgd_ce': lambda x, y, s: attacks.apgd(
          logits_fn, x, y, cfg.aa_eps, loss='ce', restarts=cfg.apgd_restarts,
          seed=s, **aa),
      'apgd_dlr': lambda x, y, s: attacks.apgd(
          logits_fn, x, y, cfg.aa_eps, loss='dlr',
          restarts=cfg.apgd_restarts, seed=s, **aa),
      'apgd_t': lambda x, y, s: attacks.apgd_targeted(
          logits_fn, x, y, cfg.aa_eps, target_classes=min(
              cfg.apgd_target_classes, num_classes - 1), seed=s, **aa),
  }
  return table[name]


def attack_variants(logits_fn: eot.LogitsFn, cfg: config_lib.AttackConfig,
                    modes: Sequence[str],
                    transfer_logits_fn: Optional[eot.LogitsFn] = None,
                    deterministic_modes: Sequence[str] = (),
                    num_classes: int = 10) -> List[Variant]:
  """Every configured attack, in `cfg.attacks` order, as variants.

  Build them once per evaluation and call them on every batch: the
  surrogate callables made here are what the compiled attacks are cached
  on.

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    cfg: attack settings.
    modes: gradient modes for the gradient attacks (`resolve_modes`).
    transfer_logits_fn: the source model of 'transfer' (needed if listed).
    deterministic_modes: modes whose surrogate has no randomness left
      (`deterministic_modes`); their attacks take one pass per gradient.
    num_classes: K (APGD-T targets at most K - 1 classes).

  Returns:
    [Variant, ...]: one per gradient attack and mode, one for square and
    transfer.
  """
  gradient_fns = {mode: surrogate.surrogate_logits_fn(logits_fn, mode)
                  for mode in modes}
  # EOT over a surrogate without randomness (the expectation of LWTA or
  # noise layers) would repeat one pass: one is enough.
  settings = {mode: cfg if mode not in (deterministic_modes or ()) else
              dataclasses.replace(cfg, eot_samples=1) for mode in modes}
  variants = []
  for name in cfg.attacks:
    if name in config_lib.GRADIENT_ATTACKS:
      for mode in modes:
        variants.append(Variant(name, mode, _gradient_attack(
            name, logits_fn, gradient_fns[mode], settings[mode],
            num_classes)))
    elif name == 'square':
      variants.append(Variant(name, '', lambda x, y, s: attacks.square(
          logits_fn, x, y, cfg.aa_eps, norm=cfg.aa_norm,
          queries=cfg.square_queries, p_init=cfg.square_p_init,
          mc_samples=cfg.mc_samples, seed=s)))
    elif name == 'transfer':
      if transfer_logits_fn is None:
        raise ValueError('--attacks=transfer needs the source model: pass '
                         '--transfer_from=RUN_DIR.')
      variants.append(Variant(name, '', _transfer(transfer_logits_fn, cfg)))
  return variants


def _transfer(source_fn: eot.LogitsFn,
              cfg: config_lib.AttackConfig) -> AttackFn:
  """APGD-CE on the source model (its expectation, if it is stochastic)."""
  source_gradient = surrogate.surrogate_logits_fn(source_fn, 'expected')
  return lambda x, y, s: attacks.apgd(
      source_gradient, x, y, cfg.aa_eps, norm=cfg.aa_norm,
      steps=cfg.apgd_steps, loss='ce', restarts=cfg.apgd_restarts, seed=s)


def random_noise_variant(logits_fn: eot.LogitsFn,
                         cfg: config_lib.AttackConfig, draws: int) -> Variant:
  """'random_noise': the worst of `draws` random points of the aa_* sphere."""
  return Variant('random_noise', '', lambda x, y, s: attacks.random_noise(
      logits_fn, x, y, cfg.aa_eps, norm=cfg.aa_norm, draws=draws,
      mc_samples=cfg.mc_samples, seed=s),
                 settings=f'{_threat(cfg)}, worst of {draws} random points')


def single_step_variants(logits_fn: eot.LogitsFn,
                         cfg: config_lib.AttackConfig, modes: Sequence[str],
                         deterministic: Sequence[str] = ()) -> List[Variant]:
  """'single_step': FGSM with the aa_* budget, one variant per mode (one
  pass per gradient for the `deterministic` modes)."""
  return [Variant('single_step', mode, lambda x, y, s, fn=fn, mode=mode:
                  attacks.fgsm(logits_fn, x, y, cfg.aa_eps, norm=cfg.aa_norm,
                               eot_samples=1 if mode in deterministic else
                               cfg.eot_samples, gradient_fn=fn),
                  settings=f'{_threat(cfg)}, one gradient step (FGSM)')
          for mode, fn in ((m, surrogate.surrogate_logits_fn(logits_fn, m))
                           for m in modes)]


def _threat(cfg: config_lib.AttackConfig) -> str:
  return f'L{"inf" if cfg.aa_norm == "inf" else "2"} eps={cfg.aa_eps:g}'


def attack_settings(name: str, cfg: config_lib.AttackConfig) -> str:
  """A short human-readable description of an attack's parameters."""
  pgd = (f'alpha={cfg.pgd_alpha:g}, steps={cfg.pgd_steps}, '
         f'restarts={cfg.pgd_restarts}')
  aa = _threat(cfg)
  return {
      'natural': '-',
      'fgsm': f'Linf eps={cfg.fgsm_eps:g}',
      'pgd_linf': f'Linf eps={cfg.pgd_eps:g}, {pgd}',
      'pgd_l2': (f'L2 eps={cfg.pgd_l2_eps:g}, alpha={cfg.pgd_l2_alpha:g}, '
                 f'steps={cfg.pgd_steps}, restarts={cfg.pgd_restarts}'),
      'cw': (f'c={cfg.cw_c:g}, kappa={cfg.cw_kappa:g}, '
             f'steps={cfg.cw_steps}, searches={cfg.cw_binary_search_steps}'),
      'apgd_ce': f'{aa}, {cfg.apgd_steps} steps, restarts={cfg.apgd_restarts}',
      'apgd_dlr': f'{aa}, {cfg.apgd_steps} steps, restarts={cfg.apgd_restarts}',
      'apgd_t': (f'{aa}, {cfg.apgd_steps} steps, '
                 f'{cfg.apgd_target_classes} targets'),
      'square': f'{aa}, {cfg.square_queries} queries, p_init={cfg.square_p_init:g}',
      'transfer': f'{aa}, APGD-CE on {cfg.transfer_from}',
      'combined': f'{cfg.combined} of {"+".join(cfg.attacks)}',
  }[name]


def variants_by_attack(variants: Sequence[Variant]) -> Dict[str, List[Variant]]:
  """{attack name: its variants}, in the variants' order."""
  grouped: Dict[str, List[Variant]] = {}
  for variant in variants:
    grouped.setdefault(variant.name, []).append(variant)
  return grouped


def image_size(delta: np.ndarray) -> Dict[str, np.ndarray]:
  """{'l2', 'linf'} norms per example of perturbations `[B, ...]`."""
  flat = delta.reshape(len(delta), -1)
  return {'l2': np.linalg.norm(flat, axis=1), 'linf': np.abs(flat).max(
      axis=1, initial=0.0)}

"""The configured attacks as runnable variants, one per gradient mode.

A gradient attack on a stochastic model runs once per gradient mode
(`layers.surrogate`): 'sample' follows the EOT average of sampled passes,
'expected' the layers' expectation, 'straight_through' sampled passes with
the expectation's gradient, and for LWTA 'training_temperature' and
'soft_temperature'. The model's decision always judges. Square (no
gradient) runs once per mode with a forward pass of its own
(`square_modes`), transfer (another model's gradient) once.

Each variant is compiled on its own (one `tf.function` traced once per
evaluation, whatever the batch size), carries its threat model (norm and
radius, stated beside every number it produces) and an estimate of its
cost, so progress can say how long is left.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta.attacks import eot
from tf_slwta.attacks import reporting
from tf_slwta.layers import surrogate

# attack(images, labels, seed, ids) -> adversarial images of the same shape;
# ids (int64 [B]) key each example's random draws (None: its position).
AttackFn = Callable[..., tf.Tensor]


@dataclasses.dataclass(frozen=True)
class Variant:
  """One runnable attack.

  Attributes:
    name: the table row ('apgd_ce').
    mode: the gradient mode ('' when the attack takes no gradient of the
      model).
    run: run(images float32 `[B, H, W, C]` in [0, 1], labels int64 `[B]`,
      seed int64 scalar, ids int64 `[B]` or None) -> adversarial images of
      the same shape; compiled once per variant (`compiled`). An example's
      random draws depend on the seed and its id alone (default: its
      position), so it is attacked the same way in any subset of its batch.
    settings: its settings text, for an attack outside `config.ATTACKS`
      ('' takes `attack_settings`).
    threat: its threat model ('Linf 0.1', 'L2 1.5', ...; see
      `threat_model`), '' takes `threat_model(name, cfg)`.
    cost: estimated forward-pass equivalents per image, > 0 (for the time
      left; see `attack_cost`).
    focus: in a cascade, the share in (0, 1] of the images still standing
      it runs on, those nearest the decision boundary first
      (`scoring.nearest_first` of the worst point found so far); 0 runs
      on all of them.
  """
  name: str
  mode: str
  run: AttackFn
  settings: str = ''
  threat: str = ''
  cost: float = 1.0
  focus: float = 0.0

  @property
  def label(self) -> str:
    """'pgd_linf' or 'pgd_linf/expected', as progress and logs show it."""
    return f'{self.name}/{self.mode}' if self.mode else self.name


class _Traced:
  """What `compiled` traces: one object per variant, so TensorFlow counts
  each variant's tracing on its own (it keys its retracing statistics on a
  function's code, which every closure would share)."""

  def __init__(self, attack: AttackFn):
    self.attack = attack

  def __call__(self, x, y, seed, ids, token):
    with reporting.traced_token(token):
      return self.attack(x, y, seed, ids)


def compiled(attack: AttackFn) -> AttackFn:
  """`attack` as one `tf.function` of its own, traced once per evaluation.

  Every variant gets its own compiled function, so the attacks' shared
  `tf.function`s are traced inside it (not once per variant at top level,
  which TensorFlow reports as retracing), with the batch axis left open (the
  last, shorter batch does not trace again). The call keeps reporting its
  progress to the caller's `reporting.reporter`.
  """

  function = tf.function(_Traced(attack), reduce_retracing=True)

  def run(x, y, seed, ids=None):
    x = tf.convert_to_tensor(x, tf.float32)
    ids = tf.range(tf.shape(x)[0], dtype=tf.int64) if ids is None else ids
    return function(x, tf.cast(y, tf.int64), tf.cast(seed, tf.int64),
                    tf.cast(ids, tf.int64), reporting.token())

  return run


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
  """The gradient modes asked for: cfg.gradient_modes, or for ('auto',)
  every mode on a stochastic model and 'sample' on a deterministic one."""
  if tuple(cfg.gradient_modes) != ('auto',):
    return list(cfg.gradient_modes)
  return list(config_lib.GRADIENT_MODES) if stochastic else ['sample']


@dataclasses.dataclass(frozen=True)
class GradientModes:
  """The gradient modes one model copy is attacked in.

  Attributes:
    functions: {mode: the logits function whose gradient (or, for Square,
      margin) the attacks follow}, in order; 'sample' is the model itself.
    deterministic: the modes whose function has no randomness (their
      attacks take one pass per gradient).
    inert: modes asked for that the model does not respond to (no layer of
      this project applies them): running them would repeat 'sample'.
  """
  functions: Dict[str, eot.LogitsFn]
  deterministic: Tuple[str, ...] = ()
  inert: Tuple[str, ...] = ()

  @property
  def names(self) -> List[str]:
    """The modes run, in order."""
    return list(self.functions)


def gradient_modes(logits_fn: eot.LogitsFn, cfg: config_lib.AttackConfig,
                   stochastic: bool, probe: tf.Tensor,
                   extra: Optional[Dict[str, eot.LogitsFn]] = None
                   ) -> GradientModes:
  """The modes to attack `logits_fn` in, and their functions.

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    cfg: attack settings (`gradient_modes`).
    stochastic: whether the model's passes differ.
    probe: float32 images `[b, H, W, C]` to probe the model with.
    extra: more {mode name: logits function} whose gradients the attacks
      follow as modes of their own (the caller's adaptive attacks, e.g. a
      BPDA stand-in of a non-differentiable layer).

  Returns:
    `GradientModes`: the modes asked for that the model responds to
    (`surrogate.responsive_modes`; one the caller named explicitly is run
    even so), then `extra`.
  """
  asked = resolve_modes(cfg, stochastic)
  responsive = surrogate.responsive_modes(logits_fn, asked, probe)
  explicit = tuple(cfg.gradient_modes) != ('auto',)
  run = [m for m in asked if m in responsive or explicit]
  batch = lambda fn: eot.batched(fn, cfg.passes_per_call, cfg.max_call_images)
  functions = {m: batch(surrogate.surrogate_logits_fn(logits_fn, m))
               for m in run}
  for name, fn in (extra or {}).items():
    if name in functions:
      raise ValueError(f'gradient function {name!r} has the name of a '
                       f'built-in gradient mode; name it otherwise.')
    functions[name] = batch(fn)
  quiet = [m for m, fn in functions.items() if not is_stochastic(fn, probe)]
  return GradientModes(functions, tuple(quiet),
                       tuple(m for m in asked if m not in run))


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
      'fgsm': lambda x, y, s, i: attacks.fgsm(logits_fn, x, y, cfg.fgsm_eps,
                                           **common),
      'pgd_linf': lambda x, y, s, i: attacks.pgd(
          logits_fn, x, y, cfg.pgd_eps, cfg.pgd_alpha, norm='inf', seed=s,
          ids=i, **pgd),
      'pgd_l2': lambda x, y, s, i: attacks.pgd(
          logits_fn, x, y, cfg.pgd_l2_eps, cfg.pgd_l2_alpha, norm=2, seed=s,
          ids=i, **pgd),
      'cw': lambda x, y, s, i: attacks.carlini_wagner_l2(
          logits_fn, x, y, c=cfg.cw_c, kappa=cfg.cw_kappa, steps=cfg.cw_steps,
          binary_search_steps=cfg.cw_binary_search_steps,
          learning_rate=cfg.cw_learning_rate, **decided),
      'apgd_ce': lambda x, y, s, i: attacks.apgd(
          logits_fn, x, y, cfg.aa_eps, loss='ce', restarts=cfg.apgd_restarts,
          seed=s, ids=i, **aa),
      'apgd_dlr': lambda x, y, s, i: attacks.apgd(
          logits_fn, x, y, cfg.aa_eps, loss='dlr',
          restarts=cfg.apgd_restarts, seed=s, ids=i, **aa),
      'apgd_margin': lambda x, y, s, i: attacks.apgd(
          logits_fn, x, y, cfg.aa_eps, loss='margin',
          restarts=cfg.apgd_restarts, seed=s, ids=i, **aa),
      'apgd_t': lambda x, y, s, i: attacks.apgd_targeted(
          logits_fn, x, y, cfg.aa_eps, target_classes=min(
              cfg.apgd_target_classes, num_classes - 1), seed=s, ids=i,
          **aa),
  }
  return table[name]


def attack_variants(logits_fn: eot.LogitsFn, cfg: config_lib.AttackConfig,
                    modes: GradientModes,
                    transfer_logits_fn: Optional[eot.LogitsFn] = None,
                    num_classes: int = 10,
                    stochastic: bool = False) -> List[Variant]:
  """Every configured attack, in `cfg.attacks` order, as variants.

  Build them once per evaluation and call them on every batch: the
  surrogate callables made here are what the compiled attacks are cached
  on.

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    cfg: attack settings.
    modes: the gradient modes (`gradient_modes`): every gradient attack and
      Square run once in each.
    transfer_logits_fn: the source model of 'transfer' (needed if listed).
    num_classes: K (APGD-T targets at most K - 1 classes).
    stochastic: whether the model's decisions are random.

  Returns:
    [Variant, ...]: one per gradient attack and mode, one per mode of
    `square_modes` for Square, one for transfer.
  """
  # EOT over a function without randomness (the expectation of LWTA or
  # noise layers) would repeat one pass: one is enough.
  settings = {mode: cfg if mode not in modes.deterministic else
              dataclasses.replace(cfg, eot_samples=1) for mode in modes.names}
  # Where an attack outside `cfg.randomized_mode_attacks` runs: the modes
  # without randomness, or the first mode if every one has some.
  quiet = modes.deterministic or tuple(modes.names[:1])
  variants = []
  for name in cfg.attacks:
    if name in config_lib.GRADIENT_ATTACKS:
      for mode, fn in modes.functions.items():
        if (cfg.randomized_mode_attacks and mode not in quiet and
            name not in cfg.randomized_mode_attacks):
          continue
        variants.append(Variant(
            name, mode, compiled(_gradient_attack(
                name, logits_fn, fn, settings[mode], num_classes)),
            cost=attack_cost(name, settings[mode], num_classes)))
    elif name == 'square':
      variants += square_variants(logits_fn, cfg, modes, stochastic,
                                  num_classes)
    elif name == 'transfer':
      if transfer_logits_fn is None:
        raise ValueError(
            'attacks includes transfer but no source model was given: pass '
            'the source run with --transfer_from=RUN_DIR (or, from Python, '
            'transfer_logits_fn).')
      variants.append(transfer_variant(transfer_logits_fn, cfg, num_classes))
  if cfg.cascade and cfg.cascade_lead_steps:
    variants = _with_lead_steps(variants, logits_fn, cfg, modes, settings,
                                num_classes)
  if cfg.cascade and cfg.cascade_focus and stochastic:
    variants += focus_variants(logits_fn, cfg, modes, num_classes)
  return variants


def focus_variants(logits_fn: eot.LogitsFn, cfg: config_lib.AttackConfig,
                   modes: GradientModes,
                   num_classes: int = 10) -> List[Variant]:
  """The cascade's focus stage (`AttackConfig.cascade_focus`): AutoAttack's
  randomized APGD-CE, with `cascade_focus_eot` passes per gradient and
  `cascade_focus_steps` steps, in every gradient mode with randomness, each
  on the share `cascade_focus` of the images still standing that are
  nearest the decision boundary.

  Returns:
    [Variant 'apgd_ce_focus', one per such mode] (none if every mode is
    deterministic).
  """
  focus_cfg = dataclasses.replace(
      cfg, eot_samples=cfg.cascade_focus_eot,
      apgd_steps=cfg.cascade_focus_steps, apgd_restarts=1)
  # APGD-DLR as well (AutoAttack-rand's second attack) broke none of the 10
  # images per mode it met on the PNI row, for about 30 s more table time.
  return [Variant(
      'apgd_ce_focus', mode, compiled(_gradient_attack(
          'apgd_ce', logits_fn, fn, focus_cfg, num_classes)),
      settings=(f'{focus_cfg.apgd_steps} steps, EOT '
                f'{focus_cfg.eot_samples}, on the {cfg.cascade_focus:.0%} of '
                f'the images still standing nearest the decision boundary '
                f'(--cascade_focus)'),
      cost=attack_cost('apgd_ce', focus_cfg, num_classes),
      focus=cfg.cascade_focus)
          for mode, fn in modes.functions.items()
          if mode not in modes.deterministic]


_APGD_ATTACKS = ('apgd_ce', 'apgd_dlr', 'apgd_margin', 'apgd_t')
# The end of the lead mode's attacks' settings text (`cascade_lead_steps`).
LEAD = 'the cascade\'s lead mode, --cascade_lead_steps'


def _with_lead_steps(variants: List[Variant], logits_fn: eot.LogitsFn,
                     cfg: config_lib.AttackConfig, modes: GradientModes,
                     settings: Dict[str, config_lib.AttackConfig],
                     num_classes: int) -> List[Variant]:
  """`variants` with every APGD attack of the cascade's lead mode (the mode
  of its first iterative attack, the cheapest) rebuilt with
  `cfg.cascade_lead_steps` iterations: the first meets every image, the
  others the images it left, and a step there costs one pass when the
  mode has no randomness (`AttackConfig.cascade_lead_steps`)."""
  lead = next((v for v in cascade_order(variants)
               if cascade_stage(v.name) == 'iterative'), None)
  if lead is None or lead.name not in _APGD_ATTACKS:
    return variants
  lead_cfg = dataclasses.replace(settings[lead.mode],
                                 apgd_steps=cfg.cascade_lead_steps)

  def rebuilt(v):
    if v.mode != lead.mode or v.name not in _APGD_ATTACKS:
      return v
    return Variant(
        v.name, v.mode, compiled(_gradient_attack(
            v.name, logits_fn, modes.functions[v.mode], lead_cfg,
            num_classes)),
        settings=f'{attack_settings(v.name, lead_cfg)} ({LEAD})',
        cost=attack_cost(v.name, lead_cfg, num_classes))

  return [rebuilt(v) for v in variants]


def attack_cost(name: str, cfg: config_lib.AttackConfig,
                num_classes: int = 10) -> float:
  """Estimated forward-pass equivalents per image of one attack run, > 0.

  A gradient counts as three passes (forward and backward), a decision as
  `mc_samples` passes. Only used to estimate the time left; the progress
  corrects it with the measured speed of each attack.
  """
  gradient = 3.0 * cfg.eot_samples
  decide = float(cfg.mc_samples)
  apgd = (cfg.apgd_steps + 1) * gradient
  costs = {
      'fgsm': gradient,
      'pgd_linf': cfg.pgd_restarts * ((cfg.pgd_steps + 1) * gradient + decide),
      'pgd_l2': cfg.pgd_restarts * ((cfg.pgd_steps + 1) * gradient + decide),
      'cw': cfg.cw_binary_search_steps * (cfg.cw_steps * gradient +
                                          2 * decide),
      'apgd_ce': cfg.apgd_restarts * (apgd + decide),
      'apgd_dlr': cfg.apgd_restarts * (apgd + decide),
      'apgd_t': min(cfg.apgd_target_classes, num_classes - 1) * (apgd +
                                                                 decide),
      'apgd_margin': cfg.apgd_restarts * (apgd + decide),
      'square': (cfg.square_queries + 1) * decide,
      'transfer': cfg.apgd_restarts * (cfg.apgd_steps + 1) * 3.0 + decide,
  }
  return max(costs.get(name, gradient), 1.0)


# Gradient modes whose forward pass is a temperature of their own: they
# exist for their gradients. Square takes no gradient, so the table runs it
# only in the other modes (on the LWTA recipe the temperature modes' Square
# broke none of the 153 images the gradient attacks left, at a third of
# the table's time); the escalation runs it in them too.
_GRADIENT_ONLY_MODES = ('training_temperature', 'soft_temperature')


def square_modes(modes: GradientModes, every: bool = False) -> List[str]:
  """The modes Square runs in: those with a forward pass of their own.

  'straight_through' samples forward exactly as 'sample' does (only its
  backward pass differs), so with 'sample' present Square there would
  repeat Square in 'sample'; unless `every`, the temperature modes are left
  out as well (`_GRADIENT_ONLY_MODES`). Never empty.

  Args:
    modes: the model's gradient modes.
    every: keep the temperature modes (the escalation's larger search).

  Returns:
    [mode, ...] in `modes` order.
  """
  names = modes.names
  keep = [m for m in names
          if not (m == 'straight_through' and 'sample' in names)]
  if not every:
    keep = [m for m in keep if m not in _GRADIENT_ONLY_MODES] or keep
  return keep


def square_variants(logits_fn: eot.LogitsFn, cfg: config_lib.AttackConfig,
                    modes: GradientModes, stochastic: bool,
                    num_classes: int = 10, queries: Optional[int] = None,
                    restarts: int = 1, name: str = 'square',
                    every: bool = False,
                    samples: Optional[int] = None) -> List[Variant]:
  """Square with the aa_* budget, once per mode of `square_modes`: in
  'sample' its search lowers the model's own margin, in the others that of
  the mode's function (the layers' expectation, say); the model decides
  either way.

  Args:
    queries, restarts: the budget (default `cfg.square_queries`, one
      search).
    name: the row (e.g. 'square_escalated').
    every: search in the temperature modes too (`square_modes`).
    samples: passes per margin estimate of a stochastic search (default
      cfg.square_samples, or cfg.mc_samples when that is 0).
    Others as `attack_variants`.
  """
  queries = queries or cfg.square_queries
  samples = samples or cfg.square_samples or cfg.mc_samples
  # Each query draws `samples` passes (the cost estimate's unit).
  budget = dataclasses.replace(cfg, square_queries=queries,
                               mc_samples=samples)
  variants = []
  for mode in square_modes(modes, every):
    fn = modes.functions[mode]
    noisy = mode not in modes.deterministic
    variants.append(Variant(name, mode if len(modes.names) > 1 else '',
                            compiled(
        lambda x, y, s, i, fn=fn, noisy=noisy: attacks.square(
            logits_fn, x, y, cfg.aa_eps, norm=cfg.aa_norm, queries=queries,
            p_init=cfg.square_p_init, mc_samples=samples, seed=s,
            restarts=restarts, score_fn=fn, stochastic=stochastic,
            score_stochastic=noisy, ids=i)),
                            settings=(f'{queries} queries, p_init='
                                      f'{cfg.square_p_init:g}' +
                                      (f', {restarts} restarts'
                                       if restarts > 1 else '') +
                                      (f', {samples} passes per estimate'
                                       if noisy and samples != cfg.mc_samples
                                       else '')),
                            cost=restarts * attack_cost(
                                'square', budget, num_classes) *
                            (2 if noisy else 1)))
  return variants


def _transfer(source_fn: eot.LogitsFn,
              cfg: config_lib.AttackConfig) -> AttackFn:
  """APGD-CE on the source model (its expectation, if it is stochastic)."""
  source_gradient = surrogate.surrogate_logits_fn(source_fn, 'expected')
  return lambda x, y, s, i: attacks.apgd(
      source_gradient, x, y, cfg.aa_eps, norm=cfg.aa_norm,
      steps=cfg.apgd_steps, loss='ce', restarts=cfg.apgd_restarts, seed=s,
      ids=i)


def transfer_variant(source_fn: eot.LogitsFn, cfg: config_lib.AttackConfig,
                     num_classes: int = 10, settings: str = '') -> Variant:
  """'transfer': APGD-CE with the aa_* budget on `source_fn` (a plain
  logits function, e.g. another run's model), judged on the attacked one;
  `settings` overrides its settings text."""
  return Variant('transfer', '', compiled(_transfer(source_fn, cfg)),
                 settings=settings,
                 cost=attack_cost('transfer', cfg, num_classes))


def random_noise_variant(logits_fn: eot.LogitsFn,
                         cfg: config_lib.AttackConfig, draws: int) -> Variant:
  """'random_noise': the worst of `draws` random points of the aa_* sphere."""
  return Variant('random_noise', '', compiled(
      lambda x, y, s, i: attacks.random_noise(
          logits_fn, x, y, cfg.aa_eps, norm=cfg.aa_norm, draws=draws,
          mc_samples=cfg.mc_samples, seed=s, ids=i)),
                 settings=f'worst of {draws} random points',
                 threat=_threat(cfg), cost=float(draws * cfg.mc_samples))


def single_step_variants(logits_fn: eot.LogitsFn,
                         cfg: config_lib.AttackConfig,
                         modes: GradientModes) -> List[Variant]:
  """'single_step': FGSM with the aa_* budget, one variant per mode (one
  pass per gradient for the deterministic modes)."""
  variants = []
  for mode, fn in modes.functions.items():
    eot_samples = 1 if mode in modes.deterministic else cfg.eot_samples
    variants.append(Variant(
        'single_step', mode, compiled(
            lambda x, y, s, i, fn=fn, eot_samples=eot_samples: attacks.fgsm(
                logits_fn, x, y, cfg.aa_eps, norm=cfg.aa_norm,
                eot_samples=eot_samples, gradient_fn=fn)),
        settings='one gradient step (FGSM)', threat=_threat(cfg),
        cost=3.0 * eot_samples))
  return variants


def _threat(cfg: config_lib.AttackConfig) -> str:
  return cfg.threat_model('apgd_ce')  # The aa_* threat model.


def threat_model(name: str, cfg: config_lib.AttackConfig) -> str:
  """The threat model of attack `name` (`AttackConfig.threat_model`)."""
  return cfg.threat_model(name)


def threat_key(threat: str) -> str:
  """A threat model as a TensorBoard tag part: 'Linf 0.1' -> 'linf_0.1',
  'Linf 0.3 + L2, minimal' -> 'linf_0.3+l2_minimal'."""
  return (threat.lower().replace(' + ', '+').replace(', ', '_')
          .replace(' ', '_'))


def attack_settings(name: str, cfg: config_lib.AttackConfig) -> str:
  """A short human-readable description of an attack's parameters (its
  threat model is `threat_model`)."""
  return {
      'natural': '-',
      'fgsm': 'one gradient step',
      'pgd_linf': (f'alpha={cfg.pgd_alpha:g}, {cfg.pgd_steps} steps, '
                   f'{cfg.pgd_restarts} restart(s)'),
      'pgd_l2': (f'alpha={cfg.pgd_l2_alpha:g}, {cfg.pgd_steps} steps, '
                 f'{cfg.pgd_restarts} restart(s)'),
      'cw': (f'c={cfg.cw_c:g}, kappa={cfg.cw_kappa:g}, {cfg.cw_steps} steps, '
             f'{cfg.cw_binary_search_steps} search step(s)'),
      'apgd_ce': f'{cfg.apgd_steps} steps, {cfg.apgd_restarts} restart(s)',
      'apgd_dlr': f'{cfg.apgd_steps} steps, {cfg.apgd_restarts} restart(s)',
      'apgd_margin': (f'{cfg.apgd_steps} steps, {cfg.apgd_restarts} '
                      f'restart(s), margin of the averaged softmax'),
      'apgd_t': (f'{cfg.apgd_steps} steps, {cfg.apgd_target_classes} '
                 f'target classes'),
      'square': f'{cfg.square_queries} queries, p_init={cfg.square_p_init:g}',
      'transfer': f'APGD-CE on {cfg.transfer_from or "the given source"}',
      'combined': f'{cfg.combined} of {"+".join(cfg.attacks)}',
  }.get(name, '')


# The cascade's order (`cascade_order`) runs in stages (`CASCADE_STAGES`):
# the iterative gradient attacks, the focus stage (`focus_variants`), then
# one gradient step, transfer, Square and random noise, so that the worst
# case before and after each stage says what the stage found that the ones
# before it missed (the audit's checks). Within the gradient stages, modes
# whose surrogate has no randomness first (one pass per gradient), then the
# sampled ones; within a mode the attacks that broke the most images per
# second on this project's models first (BENCHMARKS.md, "The audit's
# cost").
_MODE_ORDER = ('expected', 'straight_through', 'training_temperature',
               'soft_temperature', 'sample')
_ATTACK_ORDER = ('previous', 'apgd_ce', 'apgd_margin', 'apgd_dlr', 'pgd_linf',
                 'pgd_l2', 'apgd_t', 'cw', 'apgd_ce_focus', 'single_step',
                 'fgsm', 'distilled', 'transfer', 'square', 'square_escalated',
                 'random_noise')
# (stage, the attacks in it); any other attack is 'iterative'.
CASCADE_STAGES = (('previous', ('previous',)),
                  ('iterative', ()),
                  ('focus', ('apgd_ce_focus',)),
                  ('single_step', ('single_step', 'fgsm')),
                  ('transfer', ('transfer', 'distilled')),
                  ('square', ('square', 'square_escalated')),
                  ('random_noise', ('random_noise',)))


def cascade_stage(name: str) -> str:
  """The cascade stage of attack `name` (`CASCADE_STAGES`)."""
  return next((stage for stage, names in CASCADE_STAGES if name in names),
              'iterative')


def cascade_order(variants: Sequence[Variant]) -> List[Variant]:
  """The variants in the order a cascade runs them, stage by stage
  (`CASCADE_STAGES`): iterative gradient attacks (mode by mode, surrogates
  without randomness first; a caller's own gradient modes right after the
  built-in deterministic one), the focus stage, then single gradient steps
  (likewise), transfer, Square (its modes likewise) and random noise."""
  stages = [stage for stage, _ in CASCADE_STAGES]

  def key(variant):
    mode = (_MODE_ORDER.index(variant.mode) if variant.mode in _MODE_ORDER
            else 0.5 if variant.mode else len(_MODE_ORDER))
    attack = (_ATTACK_ORDER.index(variant.name)
              if variant.name in _ATTACK_ORDER else len(_ATTACK_ORDER))
    stage = stages.index(cascade_stage(variant.name))
    gradient = cascade_stage(variant.name) in ('iterative', 'focus',
                                               'single_step')
    return (stage, mode, attack) if gradient else (stage, attack, mode)
  return sorted(variants, key=key)


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

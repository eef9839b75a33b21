"""The gradient-masking audit: is the robustness number real?

Athalye, Carlini & Wagner (2018) and Carlini et al. (2019, "On evaluating
adversarial robustness") list what a sound evaluation must show. The audit
runs them on one model at one threat model, the attack settings' aa_* norm
and radius (attacks configured at another radius, e.g. the seed's FGSM at
0.3, are left out of it, with a note):

  table              the configured attacks at that threat model, each
                     gradient attack in every gradient mode the model
                     responds to, plus always Square (on the margin of each
                     mode with a forward pass of its own,
                     `attack_suite.square_modes`), one gradient step,
                     random noise and a transfer attack (from a network
                     distilled from the model unless a source is given);
                     per image the worst case, scored by fresh repeated
                     decisions. As a cascade (the default) each attack runs
                     on the images no attack before it broke, stage by
                     stage (`attack_suite.CASCADE_STAGES`), and the worst
                     case after each stage is a row of its own.
  gradients          the share of images whose input gradient is exactly 0
                     or not finite, in every mode (for the cross-entropy
                     and for the logit margin): quantized inputs, purifiers
                     behind stop_gradient and saturated logits show here
                     outright.
  gradient_direction a half-radius gradient step must deliver a tenth of
                     the margin's drop it promises to first order, in some
                     mode: shattered gradients, and gradients that lie, do
                     not.
  eps_to_zero        APGD-CE at the largest radius must take accuracy to
                     about 0 (`chance_share` of chance) and below random
                     noise at that radius.
  eps_monotone       accuracy never rises with eps above its lowest at a
                     smaller eps.
  steps_monotone     more APGD-CE iterations never help the model compared
                     with the best of fewer.
  single_step        FGSM must not beat the iterative attacks.
  gradient_free      Square (no gradients) must not beat them by much.
  transfer           a transfer attack must not beat the white-box attacks.
  noise_floor        random noise must not beat the attacks.
                     (In a cascade these four judge how far their stage
                     lowered the worst case of the stages before it, on
                     all the table's images; without one, each row
                     against the best gradient attack's.)
  gradient_modes     (stochastic models) which mode won, and how much plain
                     EOT over samples would have overstated the model
                     (APGD-CE in every mode on the sweeps' images).
  monte_carlo        the table's Monte Carlo standard error is small.

A check that cannot run says 'not run' and why. "Beat" allows `tolerance`
plus twice the two numbers' Monte Carlo standard errors. The sweeps use the
first `sweep_examples` images and the gradient mode that was strongest
there (or one without randomness, a third of the cost, within the
tolerance of it).

When a check says the gradients are masked, the audit does not stop at the
number they give: it attacks the images still standing with what needs no
gradient of the model (Square with a larger budget and restarts, in every
mode with a forward pass of its own; APGD on a gradient estimated from the
model's values alone, `eot.finite_differences`, when the gradients point
nowhere; and APGD on a network distilled from the model's own answers
around them, `distill`), with APGD-DLR on the model itself (more restarts and
EOT passes; its loss cannot saturate) and with APGD on the model's gradient
averaged over small random shifts of the input (shattered gradients average
out), judged by the decision rule and picked per image against
the worst case so far, round after round until the worst case moves by
less than a point. The table then gives that number ('escalated' row), says
how far each round moved it, and that it is still only an upper bound.
"""

import dataclasses
import hashlib
import io
import json
import math
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta.attacks import common as attack_common
from tf_slwta.attacks import eot
from tf_slwta.evaluation import attack_suite
from tf_slwta.evaluation import distill
from tf_slwta.evaluation import records
from tf_slwta.evaluation import robustness
from tf_slwta.evaluation import scoring

AUDIT_FILE = 'audit'
# Per image and decision, right or not, for every row: {row: bool [R, N]}.
OUTCOMES_FILE = 'audit_outcomes.npz'
_ITERATIVE = ('pgd_linf', 'pgd_l2', 'cw', 'apgd_ce', 'apgd_dlr', 'apgd_t',
              'apgd_margin')
_WHITE_BOX = _ITERATIVE + ('single_step', 'fgsm')
# Checks whose failure means the gradient attacks' number is not the real
# one: they start the escalation.
MASKING_CHECKS = ('gradients', 'gradient_direction', 'eps_to_zero',
                  'eps_monotone', 'steps_monotone', 'single_step',
                  'gradient_free', 'transfer', 'noise_floor')
# A share above this of images with a zero or non-finite gradient in every
# mode fails `gradients`.
ZERO_GRADIENT_SHARE = 0.1
# Escalation's input-noise EOT: gradients averaged per step.
_SMOOTHING_PASSES = 16
# Escalation's gradient from the model's values alone: antithetic pairs of
# queries per step (`eot.finite_differences`), smoothing at the radius. On
# the masking zoo's shattered toy (48 images, eps 0.03, 50 APGD steps):
# 32 pairs leave 100%, 128 40%, 512 4% (BPDA 2%); tiled directions
# (4 x 4 blocks) did worse, 92% with 64 pairs.
_DIFFERENCE_PAIRS = 512
# Epochs of the table's distilled transfer source (the escalation's, on the
# few images left standing, keeps `distill`'s 40). What APGD on the source
# leaves standing, 200 images at eps 0.1, 500 distilled
# (`benchmarks/distill_epochs.py`), at 40 / 20 / 10 epochs: 52.5 / 53.0 /
# 56.0% on the masking zoo's plain CNN, 69.0 / 69.5 / 69.5% quantized,
# 76.0 / 75.0 / 76.0% quantized + saturated, 42.5 / 43.5 / 46.0% purified,
# 67.5 / 68.0 / 69.0% on the PNI row (decisions of 10 passes); training
# took 39 s at 20 epochs where 40 took 67 s there.
_TABLE_DISTILL_EPOCHS = 20
# Its epochs when it also learns from a pool of training images
# (`AuditConfig.distill_pool`): 10,000 pool images at 4 epochs beat 500
# images x 9 at 20 epochs by 5-11 points of transfer, in half the time
# (see distill_pool).
_POOL_DISTILL_EPOCHS = 4
# `gradient_direction` passes when in some mode a gradient step delivers at
# least this share of the margin's drop it promises to first order.
DIRECTION_SHARE = 0.1


@dataclasses.dataclass(frozen=True)
class Check:
  """One line of the checklist.

  Attributes:
    name: the check's key (see the module docstring).
    passed: False when the evaluation looks unsound (True for 'not run').
    detail: one sentence with the numbers, saying what failed and what to do,
      or why the check could not run.
    status: 'passed', 'failed' or 'not run'.
  """
  name: str
  passed: bool
  detail: str
  status: str = ''

  def __post_init__(self):
    if not self.status:
      object.__setattr__(self, 'status',
                         'passed' if self.passed else 'failed')


def _not_run(name: str, why: str) -> Check:
  return Check(name, True, why, 'not run')


def _row(rows, name) -> Optional[dict]:
  return next((r for r in rows if r['attack'] == name), None)


def _slack(a: dict, b: dict, tolerance: float) -> float:
  return tolerance + 2 * float(np.hypot(a.get('mc_se', 0.0),
                                        b.get('mc_se', 0.0)))


def _beats(a: dict, b: dict, tolerance: float) -> bool:
  """Row a's accuracy is below row b's by more than the allowed slack."""
  return a['accuracy'] < b['accuracy'] - _slack(a, b, tolerance)


def _pct(value: float) -> str:
  return f'{100 * value:.1f}%'


def _strongest(rows: Sequence[dict], names: Sequence[str]) -> Optional[dict]:
  """The lowest row among `names` (an attack's own row, or its per-mode
  rows when it has no own row)."""
  found = [r for r in rows if r['attack'].split('/')[0] in names]
  return min(found, key=lambda r: r['accuracy']) if found else None


def _rises(sweep: Sequence[dict], key: str, tolerance: float) -> List[str]:
  """Points of a sweep above the lowest point before them (by more than the
  slack): more eps, or more steps, helped the model."""
  rises = []
  for k in range(1, len(sweep)):
    best = min(sweep[:k], key=lambda p: p['accuracy'])
    if _beats(best, sweep[k], tolerance):
      rises.append(f'{_pct(sweep[k]["accuracy"])} at {key} '
                   f'{sweep[k][key]:g} after {_pct(best["accuracy"])} at '
                   f'{key} {best[key]:g}')
  return rises


def checks(rows: Sequence[dict], eps_sweep: Sequence[dict],
           steps_sweep: Sequence[dict], cfg: config_lib.AuditConfig,
           stochastic: bool, gradients: Optional[Dict[str, dict]] = None,
           classes: int = 10, noise_at_largest: Optional[dict] = None,
           mode_rows: Optional[Sequence[dict]] = None) -> List[Check]:
  """The checklist's verdicts from the audit's numbers.

  Args:
    rows: the audit table (`robustness.evaluate_robustness` rows), every
      row at the audited threat model: either one row per attack (and per
      mode), or a cascade's with its 'after_<stage>' rows (then
      `single_step`, `gradient_free`, `transfer` and `noise_floor` judge
      how far each of those stages lowered the worst case of the stages
      before it, on the images they left standing).
    eps_sweep: [{'eps', 'accuracy', 'mc_se'}, ...] in increasing eps.
    steps_sweep: [{'steps', 'accuracy', 'mc_se'}, ...] in increasing steps.
    cfg: the audit settings (tolerance, chance_share).
    stochastic: whether the model's passes differ.
    gradients: {mode: {'ce': share, 'margin': share}} of images whose input
      gradient is 0 or not finite (`gradient_health`), or None.
    classes: K, the model's classes.
    noise_at_largest: random noise's row at the sweep's largest eps.
    mode_rows: the per-mode rows `gradient_modes` compares (default:
      `rows`).

  Returns:
    [Check, ...], failures and passes alike, in checklist order.
  """
  tol = cfg.tolerance
  found = []
  if gradients:
    worst = {loss: min(g[loss] for g in gradients.values())
             for loss in ('ce', 'margin')}
    bad = [loss for loss, share in worst.items()
           if share > ZERO_GRADIENT_SHARE]
    shares = '; '.join(
        f'{mode}: CE {_pct(g["ce"])}, margin {_pct(g["margin"])}'
        for mode, g in gradients.items())
    found.append(Check(
        'gradients', not bad,
        f'images whose input gradient is 0 or not finite, by mode ({shares})'
        + ('' if not bad else
           f': in every mode more than {_pct(ZERO_GRADIENT_SHARE)} of the '
           f'images give no usable gradient of the {" or ".join(bad)} loss '
           '(a quantized or purified input, or saturated logits): the '
           'gradient attacks cannot see the model')))
  else:
    found.append(_not_run('gradients', 'no gradient was measured'))
  probed = {mode: g for mode, g in (gradients or {}).items()
            if 'explained' in g}
  if probed:
    pointing = [mode for mode, g in probed.items()
                if g['explained'] >= DIRECTION_SHARE]
    shares_ = '; '.join(f'{mode}: {g["explained"]:.2f}'
                        for mode, g in probed.items())
    found.append(Check(
        'gradient_direction', bool(pointing),
        f'share of the drop of the decision margin a half-radius gradient '
        f'step promises (to first order) that it delivers, by mode '
        f'({shares_})' + ('' if pointing else
                          f': below {DIRECTION_SHARE:g} in every mode: the '
                          f'gradients do not say where the model goes '
                          f'(shattered, or they lie), so the gradient '
                          f'attacks are blind')))
  else:
    found.append(_not_run('gradient_direction',
                          'no gradient direction was measured'))
  if eps_sweep:
    last = eps_sweep[-1]
    zero = cfg.chance_share / classes
    fails = []
    if last['accuracy'] > zero:
      fails.append(f'more than {_pct(zero)} ({cfg.chance_share:g} of chance '
                   f'for {classes} classes)')
    versus = (noise_at_largest or {}).get('versus') or last
    if noise_at_largest is not None and _beats(noise_at_largest, versus, tol):
      fails.append(f'more than random noise at that radius '
                   f'({_pct(noise_at_largest["accuracy"])} against '
                   f'{_pct(versus["accuracy"])} on the images attacked '
                   f'there)')
    found.append(Check(
        'eps_to_zero', not fails,
        f'APGD-CE at eps={last["eps"]:g} leaves {_pct(last["accuracy"])}' + (
            f' (at most {_pct(zero)}'
            + (f', random noise {_pct(noise_at_largest["accuracy"])}'
               if noise_at_largest is not None else '') + ')'
            if not fails else
            f': {" and ".join(fails)}; an attack that cannot break a model '
            'at any radius is not finding its gradients (masking)')))
    rises = _rises(eps_sweep, 'eps', tol) + [
        f'the fresh attack at eps {p["eps"]:g} left {p["spot"]["standing"]:g} '
        f'of {p["spot"]["examples"]} images standing that a smaller eps had '
        f'broken (at most {p["spot"]["allowed"]} allowed)'
        for p in eps_sweep if p.get('spot') and
        p['spot']['standing'] > p['spot']['allowed']]
    checked = sum(p['spot']['examples'] for p in eps_sweep if p.get('spot'))
    found.append(Check(
        'eps_monotone', not rises,
        'accuracy never rises with eps (' + ', '.join(
            f'{p["eps"]:g}: {_pct(p["accuracy"])}' for p in eps_sweep) + ')'
        + (f'; images broken at a smaller eps and attacked afresh at a '
           f'larger one fell again ({checked} checked)' if checked else '')
        if not rises else 'accuracy rises with eps: ' + '; '.join(rises)))
  else:
    found.append(_not_run('eps_to_zero', 'no eps sweep (--audit_eps_multiples)'))
  if steps_sweep:
    rises = _rises(steps_sweep, 'steps', tol)
    found.append(Check(
        'steps_monotone', not rises,
        'more APGD-CE steps never help the model (' + ', '.join(
            f'{s["steps"]}: {_pct(s["accuracy"])}' for s in steps_sweep) + ')'
        if not rises else 'more steps help the model: ' + '; '.join(rises) +
        '; the attack is not converging (noisy gradients: raise '
        '--eot_samples or use another gradient mode)'))
  if any(r['attack'].startswith('after_') for r in rows):
    found += _stage_checks(rows, tol)
  else:
    found += _row_checks(rows, tol)
  found.append(_mode_check(mode_rows or rows, tol, stochastic))
  combined = _row(rows, 'combined')
  if combined is not None:
    se = combined.get('mc_se', 0.0)
    found.append(Check(
        'monte_carlo', se <= max(tol / 2, 0.005),
        f'worst case {_pct(combined["accuracy"])} +- {100 * se:.2f} (Monte '
        f'Carlo s.e., {combined.get("repeats", 1)} decisions) +- '
        f'{100 * combined.get("image_se", 0.0):.2f} (image s.e., '
        f'{combined["examples"]} images)' + (
            '' if se <= max(tol / 2, 0.005) else
            ': too noisy to compare; raise --decision_repeats or '
            '--mc_samples')))
  return found


def _row_checks(rows: Sequence[dict], tol: float) -> List[Check]:
  """single_step, gradient_free, transfer, noise_floor from one row per
  attack: each compared with the best (iterative) gradient attack."""
  found = []
  iterative = _strongest(rows, _ITERATIVE)
  gradient = _strongest(rows, _WHITE_BOX)
  single = _strongest(rows, ('single_step',))
  if single and iterative:
    bad = _beats(single, iterative, tol)
    found.append(Check(
        'single_step', not bad,
        f'one gradient step ({single["attack"]}) {_pct(single["accuracy"])} '
        f'vs the best iterative attack ({iterative["attack"]}) '
        f'{_pct(iterative["accuracy"])}' + (
            ': a single step beats many, so the iterative attacks are stuck '
            '(masked or noisy gradients)' if bad else '')))
  else:
    found.append(_not_run('single_step', 'no iterative gradient attack at '
                          'the audited threat model'))
  for names, check, what, allowed, missing in (
      (('square',), 'gradient_free', 'Square (no gradients)', 2 * tol,
       'no Square row'),
      (('transfer',), 'transfer', 'the transfer attack', tol,
       'no transfer source (--transfer_from, or transfer_logits_fn)'),
      (('random_noise',), 'noise_floor', 'random noise', tol,
       'no random-noise row')):
    row = _strongest(rows, names)
    if row is None or gradient is None:
      found.append(_not_run(check, missing if row is None else
                            'no gradient attack at the audited threat model'))
      continue
    # Square may come a little under the gradient attacks; noise may not.
    bad = _beats(row, gradient, allowed)
    found.append(Check(
        check, not bad,
        f'{what} ({row["attack"]}) {_pct(row["accuracy"])} vs the best '
        f'gradient attack ({gradient["attack"]}) '
        f'{_pct(gradient["accuracy"])}' + (
            f': {what} beats the gradients, so they are masked; the audit '
            f'escalates' if bad else '')))
  return found


# The cascade stages a check judges: (stage, check, what, allowed drop in
# units of the tolerance, why it may not run).
_STAGE_CHECKS = (
    ('single_step', 'single_step', 'one gradient step', 1,
     'no iterative gradient attack ran before the single steps'),
    ('square', 'gradient_free', 'Square (no gradients)', 2, 'no Square stage'),
    ('transfer', 'transfer', 'the transfer attack', 1,
     'no transfer source (--transfer_from, or transfer_logits_fn)'),
    ('random_noise', 'noise_floor', 'random noise', 1,
     'no random-noise stage'))


def _stage_checks(rows: Sequence[dict], tol: float) -> List[Check]:
  """single_step, gradient_free, transfer, noise_floor from a cascade's
  stage rows: a stage must not lower the worst case of the stages before
  it (freshly scored, on every image) by more than its allowance plus
  twice the two rows' Monte Carlo s.e."""
  combined = _row(rows, 'combined')
  ran = [attack_suite.cascade_stage(c['attack'].split('/')[0])
         for c in combined.get('cascade', [])]
  order = [s for s in dict.fromkeys(ran) if s != 'previous']
  through = {stage: _row(rows, f'after_{stage}') for stage in order[:-1]}
  if order:
    through[order[-1]] = combined
  found = []
  for stage, check, what, allowed, missing in _STAGE_CHECKS:
    at = order.index(stage) if stage in order else -1
    if at < 1 or through.get(order[at - 1]) is None:
      found.append(_not_run(check, missing if at < 0 else
                            'no gradient attack ran before it'))
      continue
    before, after = through[order[at - 1]], through[stage]
    bad = _beats(after, before, allowed * tol)
    found.append(Check(
        check, not bad,
        f'{what} took the worst case of the attacks before it '
        f'({", ".join(order[:at])}) from {_pct(before["accuracy"])} to '
        f'{_pct(after["accuracy"])} (what it broke, they had left standing; '
        f'allowed: {_pct(allowed * tol)} plus twice the Monte Carlo '
        f's.e.)' + (
            f': {what} finds what the gradient attacks miss, so they are '
            f'masked or stuck; the audit escalates' if bad else '')))
  return found


def mode_wins(rows: Sequence[dict]) -> Dict[str, str]:
  """{attack: its strongest gradient mode} from the per-mode rows."""
  by_attack: Dict[str, Dict[str, dict]] = {}
  for r in rows:
    if '/' in r['attack']:
      name, mode = r['attack'].split('/', 1)
      by_attack.setdefault(name, {})[mode] = r
  return {name: min(modes.items(), key=lambda m: m[1]['accuracy'])[0]
          for name, modes in by_attack.items() if len(modes) > 1}


def _mode_check(rows: Sequence[dict], tol: float, stochastic: bool) -> Check:
  if not stochastic:
    return _not_run('gradient_modes', 'a deterministic model has one '
                    'gradient')
  per_mode = {}
  for r in rows:
    if '/' in r['attack']:
      name, mode = r['attack'].split('/', 1)
      per_mode.setdefault(name, {})[mode] = r
  gaps = []
  for name, modes in per_mode.items():
    if 'sample' in modes and len(modes) > 1:
      best = min(modes.values(), key=lambda r: r['accuracy'])
      gaps.append((modes['sample']['accuracy'] - best['accuracy'], name,
                   best['attack'], _slack(modes['sample'], best, tol)))
  if not gaps:
    inert = rows[0].get('inert_modes') if rows else ''
    return _not_run('gradient_modes', 'one gradient mode only' + (
        f' (the model does not respond to {inert})' if inert else ''))
  wins = ', '.join(f'{a}: {m}' for a, m in mode_wins(rows).items())
  gap, name, best, allowed = max(gaps)
  return Check(
      'gradient_modes', gap <= allowed,
      f'strongest mode per attack: {wins}; {name} with EOT over samples is '
      f'{100 * gap:.1f} points weaker than {best}' + (
          ': the sampled passes mask the gradient; the table keeps the '
          'adaptive worst case' if gap > allowed else ''))


def gradient_health(modes: attack_suite.GradientModes, images: np.ndarray,
                    labels: np.ndarray, batch_size: int = 500,
                    logits_fn: Optional[attacks.eot.LogitsFn] = None,
                    eps: float = 0.0, norm: str = 'inf',
                    mc_samples: int = 1) -> Dict[str, Dict[str, float]]:
  """How many images give no usable input gradient, and whether the
  gradient points anywhere, per gradient mode.

  The second (with `logits_fn` and `eps`): one step of half the radius
  along the margin loss's gradient (its sign for L-inf); the drop of each
  image's decision margin (log of the softmax averaged over `mc_samples`
  passes of the real model) that the gradient predicts to first order,
  against the drop measured. An honest gradient explains a good part of
  what happens (about all of it, on a smooth model); a shattered one
  promises far more than happens, one that lies promises at random.

  Args:
    modes: the gradient modes and their logits functions.
    images: uint8 `[N, H, W, C]`.
    labels: int `[N]`.
    batch_size: images per call.
    logits_fn: the model (images in [0, 1] -> logits `[B, K]`), or None to
      skip the direction test.
    eps, norm: the audited radius and norm ('inf' or '2').
    mc_samples: passes per margin estimate.

  Returns:
    {mode: {'ce': share in [0, 1] of images whose cross-entropy gradient
    (one pass) is exactly 0 everywhere or not finite anywhere, 'margin':
    the same for the logit margin z_y - max_{i != y} z_i, and with the
    direction test 'explained': the mean measured drop over the mean
    predicted one (1: the gradient tells the truth; about 0 or negative:
    it points nowhere)}}.
  """
  losses = {'ce': lambda y: lambda z: attack_common.cross_entropy(y, z),
            'margin': lambda y: lambda z: -attack_common.log_margin(z, y)}
  probe = logits_fn is not None and eps > 0

  def margin(x, y):
    return attack_common.log_margin(
        eot.mean_log_probabilities(logits_fn, x, mc_samples), y)

  def step(direction):  # Half the radius along `direction` `[B, H, W, C]`.
    if norm == 'inf':
      return 0.5 * eps * tf.sign(direction)
    flat = tf.reshape(direction, [tf.shape(direction)[0], -1])
    size = tf.norm(flat, axis=1)[:, None, None, None]
    return 0.5 * eps * direction / (size + 1e-12)

  def total(v):  # Per image: `[B]`.
    return tf.reduce_sum(tf.reshape(v, [tf.shape(v)[0], -1]), axis=1)

  shares = {}
  for mode, fn in modes.functions.items():
    bad = {loss: 0 for loss in losses}
    measured, predicted = [], []
    for start in range(0, len(images), batch_size):
      x = data_lib.to_float_image(images[start:start + batch_size])
      y = tf.constant(labels[start:start + batch_size], tf.int64)
      grads = {}
      for loss, make in losses.items():
        grads[loss], _, _ = eot.loss_gradient(fn, make(y), x)
        flat = tf.reshape(grads[loss], [tf.shape(x)[0], -1])
        zero = tf.reduce_all(tf.equal(flat, 0.0), axis=1)
        broken = tf.logical_not(tf.reduce_all(tf.math.is_finite(flat), axis=1))
        bad[loss] += int(tf.reduce_sum(tf.cast(zero | broken, tf.int32)))
      if probe:  # The margin loss rises as the margin falls.
        grad = grads['margin']
        grad = tf.where(tf.math.is_finite(grad), grad, 0.0)
        along = tf.clip_by_value(x + step(grad), 0.0, 1.0)
        measured.append((margin(x, y) - margin(along, y)).numpy())
        predicted.append(total(grad * (along - x)).numpy())
    shares[mode] = {loss: count / max(len(images), 1)
                    for loss, count in bad.items()}
    if probe:
      drop, promised = np.concatenate(measured), np.concatenate(predicted)
      keep = np.isfinite(drop) & np.isfinite(promised)
      promised_mean = float(promised[keep].mean()) if keep.any() else 0.0
      shares[mode]['explained'] = (float(drop[keep].mean()) / promised_mean
                                   if promised_mean > 0 else 0.0)
  return shares


def _sweep_config(cfg: config_lib.AttackConfig, mode: str,
                  **changes) -> config_lib.AttackConfig:
  return dataclasses.replace(cfg, attacks=('apgd_ce',), gradient_modes=(mode,),
                             transfer_from='', apgd_restarts=1,
                             cascade=False, **changes)


def audited_attacks(attack: config_lib.AttackConfig):
  """(attacks of the audit's table, notes): the configured ones at the aa_*
  threat model, with Square always among them; the others are left out,
  each named in a note."""
  audited = attack.threat_model('apgd_ce')
  kept, left = [], []
  for name in attack.attacks:
    if name == 'transfer':
      continue  # The source is passed to the audit itself.
    (kept if attack.threat_model(name) == audited else left).append(name)
  if 'square' not in kept:
    kept.append('square')
  notes = [f'Left out of the audit, which compares attacks at one threat '
           f'model ({audited}): {", ".join(f"{n} ({attack.threat_model(n)})" for n in left)}; '
           f'--mode=evaluate scores them.'] if left else []
  return tuple(kept), notes


def run_audit(logits_fn: attacks.eot.LogitsFn, images: np.ndarray,
              labels: np.ndarray, attack: config_lib.AttackConfig,
              audit: config_lib.AuditConfig, *, batch_size: int = 500,
              transfer_logits_fn: Optional[attacks.eot.LogitsFn] = None,
              verbose: bool = True,
              examples: Optional[robustness.Examples] = None,
              replicas: Sequence[robustness.Replica] = (),
              shard: robustness.Shard = robustness.Shard(),
              folder: Optional[str] = None,
              gradient_fns: Optional[Dict[str, attacks.eot.LogitsFn]] = None,
              distill_pool: Optional[np.ndarray] = None
              ) -> Dict[str, object]:
  """Runs the whole checklist on one model, and escalates if it must.

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    images: uint8 `[N, H, W, C]`, the audited test images.
    labels: int `[N]`.
    attack: the attacks of the table and the aa_* threat model.
    audit: the checklist's settings.
    batch_size: images per attack batch.
    transfer_logits_fn: the source model of a transfer attack, if any (a
      plain callable; no --transfer_from needed).
    verbose: show the progress and one line per sweep point.
    examples: filled in for the figures, as `evaluate_robustness` does.
    replicas, shard: how the batches spread over devices and workers (see
      `robustness.evaluate_robustness`); logits_fn may then be None.
    folder: where every part keeps its per-batch record (`batches`,
      `eps-<eps>`, `steps-<n>`, `escalation-<round>`), so a killed audit
      resumes; None keeps none (and needs a single worker).
    gradient_fns: more {name: logits function} whose gradients every
      gradient attack also follows (the caller's own adaptive attacks, e.g.
      BPDA through a layer the audit cannot see into); one replica only.
    distill_pool: uint8 `[M, H, W, C]` images other than the audited ones
      (e.g. training images; their labels are not needed), or None: the
      table's distilled transfer source also learns the model's answers on
      the first `audit.distill_pool` of them.

  Returns:
    {'rows': the table (robustness rows; 'combined' is the worst case over
    the table's attacks, 'escalated' after escalation when it ran; then one
    row per gradient mode), 'worst_case' (the strongest number found, a row),
    'eps_sweep', 'steps_sweep' ([{'eps' or 'steps', 'accuracy', 'mc_se',
    'image_se', 'examples'}]), 'outcomes' ({row: bool `[R, N]`}),
    'checks' ([Check as dict]), 'failed' (names), 'gradients'
    (`gradient_health`), 'mode_wins', 'escalation' ([{'round', 'images',
    'before', 'after'}], empty when it did not run), 'upper_bound' (a
    masking check failed: the number is only an upper bound), 'notes',
    'stochastic', 'sweep_mode', 'examples', 'sweep_examples'}.
  """
  replicas = list(replicas) or [robustness.Replica(logits_fn)]
  probe = data_lib.to_float_image(images[:8])
  stochastic = attack_suite.is_stochastic(replicas[0].logits_fn, probe)
  names, notes = audited_attacks(attack)
  table_cfg = dataclasses.replace(attack, attacks=names, combined='worst_case')
  seconds = {}
  transfer_settings = ''
  distilled = transfer_logits_fn is None and audit.distill_examples > 0
  pool = (distill_pool[:audit.distill_pool]
          if distilled and distill_pool is not None else images[:0])
  if distilled:  # A transfer source that needs no other run.
    clock = time.perf_counter()
    around = min(len(images), audit.distill_examples)
    # The model's answers on the images and the pool, or (no pool) on the
    # images and random points of their eps balls.
    transfer_logits_fn = distill.distill(
        replicas[0].logits_fn,
        data_lib.to_float_image(images[:around]).numpy(),
        attack.aa_eps, attack.aa_norm, mc_samples=attack.mc_samples,
        extra=data_lib.to_float_image(pool).numpy() if len(pool) else None,
        seed=attack.seed, copies=0 if len(pool) else 8,
        epochs=_POOL_DISTILL_EPOCHS if len(pool) else _TABLE_DISTILL_EPOCHS)
    transfer_settings = (
        f'APGD-CE on a network distilled from the model\'s answers ' +
        (f'on {around} of these images and {len(pool):,} training images'
         if len(pool) else f'around {around} images'))
    seconds['distill'] = time.perf_counter() - clock
  # What the parts' records depend on besides the model (the caller's
  # folder is keyed by that): no paths, so a moved run keeps its record.
  settings = {'attack': {k: v for k, v in dataclasses.asdict(table_cfg).items()
                         if k != 'transfer_from'},
              'transfer': ((f'distilled, {_POOL_DISTILL_EPOCHS} epochs, '
                            f'{len(pool)} pool images') if len(pool) else
                           f'distilled, {_TABLE_DISTILL_EPOCHS} epochs'
                           if distilled else
                           transfer_logits_fn is not None),
              'gradient_fns': sorted(gradient_fns or {}),
              # Records of audits before the cascade had stage rows (and
              # Square fewer modes) do not match: their parts are redone.
              'layout': 2,
              'audit': dataclasses.asdict(audit), 'examples': len(images),
              'batch_size': batch_size}

  def scale(part: str) -> dict:
    record = None if folder is None else records.BatchRecords(
        os.path.join(folder, part), {**settings, 'part': part})
    return {'replicas': replicas, 'shard': shard, 'record': record}

  def extra(fn, modes_):
    found = attack_suite.single_step_variants(fn, attack, modes_) + [
        attack_suite.random_noise_variant(fn, attack, audit.noise_draws)]
    if transfer_logits_fn is not None:
      found.append(attack_suite.transfer_variant(
          transfer_logits_fn, attack, settings=transfer_settings))
    return found

  subset = slice(0, audit.sweep_examples)
  clock = time.perf_counter()
  outcomes, picks = {}, {}
  rows = robustness.evaluate_robustness(
      None, images, labels, table_cfg, batch_size=batch_size,
      verbose=verbose, examples=examples, stochastic=stochastic,
      extra_attacks=extra, rows_per_mode=not table_cfg.cascade,
      outcomes=outcomes, picks=picks, title='audit table',
      gradient_fns=gradient_fns, stage_rows=table_cfg.cascade,
      **scale('batches'))
  seconds['table'] = time.perf_counter() - clock
  # With a cascade the table's stage rows say what Square, transfer, one
  # gradient step and noise found beyond the attacks before them (the
  # checks); which gradient mode is strongest takes APGD-CE in every mode
  # on the same images: on the first sweep_examples, a small table of its
  # own (its point also serves both sweeps).
  compared, compared_outcomes = rows, outcomes
  if table_cfg.cascade:
    clock = time.perf_counter()
    compared_outcomes = {}
    compared = robustness.evaluate_robustness(
        None, images[subset], labels[subset],
        dataclasses.replace(table_cfg, attacks=('apgd_ce',), cascade=False),
        batch_size=batch_size, verbose=verbose, stochastic=stochastic,
        rows_per_mode=True, outcomes=compared_outcomes,
        title='audit modes table', gradient_fns=gradient_fns,
        **scale('modes'))
    seconds['modes_table'] = time.perf_counter() - clock
  modes = [m for m in rows[0]['gradient_modes'].split(',') if m]
  clock = time.perf_counter()
  model_modes = attack_suite.gradient_modes(
      replicas[0].logits_fn, table_cfg, stochastic, probe, gradient_fns)
  sweep_mode = _sweep_mode(compared, modes, model_modes.deterministic,
                           audit.tolerance)
  gradients = gradient_health(
      model_modes, images[subset], labels[subset], batch_size,
      logits_fn=replicas[0].logits_fn, eps=table_cfg.aa_eps,
      norm=str(table_cfg.aa_norm), mc_samples=table_cfg.mc_samples)
  seconds['gradients'] = time.perf_counter() - clock
  classes = int(replicas[0].logits_fn(probe[:1]).shape[-1])

  def sweep(cfg, part, extra_attacks=None, found_outcomes=None, ids=None):
    """The sweep point `cfg` on the first sweep_examples images (or those
    of them at `ids`); fills `found_outcomes` ({row: bool `[R, n]`})."""
    reused = (None if ids is not None else _reused_point(
        cfg, table_cfg, sweep_mode, compared_outcomes, audit.sweep_examples,
        extra_attacks))
    if reused is not None:  # The table's own APGD-CE on these images.
      if found_outcomes is not None:
        key = next(k for k in (f'apgd_ce/{sweep_mode}', 'apgd_ce')
                   if k in compared_outcomes)
        found_outcomes['apgd_ce'] = compared_outcomes[key][
            :, :audit.sweep_examples]
      return reused
    chosen = np.arange(len(images))[subset]
    chosen = chosen if ids is None else chosen[ids]
    return robustness.evaluate_robustness(
        None, images[chosen], labels[chosen], cfg, batch_size=batch_size,
        verbose=verbose, stochastic=stochastic, title=f'audit {part}',
        extra_attacks=extra_attacks, outcomes=found_outcomes, gradient_fns=(
            gradient_fns if sweep_mode in (gradient_fns or {}) else None),
        **scale(part))

  clock = time.perf_counter()
  cap = 1.0 if attack.aa_norm == 'inf' else float('inf')
  eps_sweep, noise_at_largest, previous = [], None, None
  for k, multiple in enumerate(audit.eps_multiples):
    eps = min(attack.aa_eps * multiple, cap)
    cfg = _sweep_config(attack, sweep_mode, aa_eps=eps,
                        apgd_steps=min(attack.apgd_steps, 50))
    largest = k == len(audit.eps_multiples) - 1
    noise = (lambda fn, modes_, cfg=cfg: [attack_suite.random_noise_variant(
        fn, cfg, audit.noise_draws)]) if largest else None
    # A point the modes table already has is read whole from it.
    reused = _reused_point(cfg, table_cfg, sweep_mode, compared_outcomes,
                           audit.sweep_examples, noise) is not None
    point, previous, found = _eps_point(
        lambda ids, out, cfg=cfg, eps=eps, noise=noise: sweep(
            cfg, f'eps-{eps:g}', noise, out, ids),
        eps, None if reused else previous, audit.eps_spot, audit.tolerance)
    eps_sweep.append(point)
    if largest and found is not None:
      noise_at_largest = _row(found, 'random_noise')
      if noise_at_largest is not None:  # Compared on the same images.
        noise_at_largest = {**noise_at_largest,
                            'versus': _row(found, 'apgd_ce')}
    if verbose:
      print(f'audit: eps sweep, eps={eps:g}: '
            f'{_pct(eps_sweep[-1]["accuracy"])}' + (
                f' ({point["attacked"]} of {point["examples"]} images '
                f'attacked, the others broken at a smaller eps)'
                if point['attacked'] < point['examples'] else ''),
            flush=True)
  seconds['eps_sweep'] = time.perf_counter() - clock
  clock = time.perf_counter()
  steps_sweep = []
  for steps in audit.sweep_steps:
    row = _row(sweep(_sweep_config(attack, sweep_mode, apgd_steps=steps),
                     f'steps-{steps}'), 'apgd_ce')
    steps_sweep.append(_point('steps', steps, row))
    if verbose:
      print(f'audit: steps sweep, {steps} steps: {_pct(row["accuracy"])}',
            flush=True)
  seconds['steps_sweep'] = time.perf_counter() - clock
  found = checks(rows, eps_sweep, steps_sweep, audit, stochastic,
                 gradients, classes, noise_at_largest,
                 mode_rows=compared if compared is not rows else None)
  failed = [c.name for c in found if not c.passed]
  masked = [name for name in failed if name in MASKING_CHECKS]
  escalation = []
  worst = _row(rows, 'combined')
  if masked and audit.escalate:
    clock = time.perf_counter()
    worst, escalation = _escalate(
        replicas, images, labels, table_cfg, audit, outcomes, picks,
        stochastic, scale, verbose, gradient_fns, batch_size,
        # Gradients that exist but point nowhere (not merely 0).
        values_only=('gradient_direction' in masked and
                     'gradients' not in masked))
    rows = _insert_after_combined(rows, worst)
    seconds['escalation'] = time.perf_counter() - clock
  if masked:
    notes.append(_bound_note(masked, escalation, _row(rows, 'combined'),
                             worst, audit.escalate))
  return {'rows': rows, 'worst_case': worst, 'outcomes': outcomes,
          'compared_rows': compared if compared is not rows else None,
          'eps_sweep': eps_sweep, 'steps_sweep': steps_sweep,
          'checks': [dataclasses.asdict(c) for c in found],
          'failed': failed, 'gradients': gradients,
          'mode_wins': mode_wins(compared), 'escalation': escalation,
          'upper_bound': bool(masked), 'notes': notes,
          'stochastic': stochastic, 'sweep_mode': sweep_mode,
          'seconds': seconds, 'examples': len(images),
          'sweep_examples': min(audit.sweep_examples, len(images))}


def _reused_point(cfg, table_cfg, mode, outcomes, count, extra_attacks):
  """The sweep point `cfg` from the table's own APGD-CE outcomes on the
  first `count` images when the table ran exactly that attack there (the
  same radius, steps and one restart, in `mode`), else None."""
  same = (extra_attacks is None and cfg.aa_eps == table_cfg.aa_eps and
          cfg.apgd_steps == table_cfg.apgd_steps and
          table_cfg.apgd_restarts == 1 and 'apgd_ce' in table_cfg.attacks)
  key = next((k for k in (f'apgd_ce/{mode}', 'apgd_ce') if k in outcomes),
             None)
  if not same or key is None:
    return None
  ok = outcomes[key][:, :count]
  numbers = scoring.summarize(ok, np.zeros(ok.shape[1]),
                              np.zeros(ok.shape[1]))
  return [{'attack': 'apgd_ce', **numbers, 'examples': ok.shape[1]}]


def _insert_after_combined(rows: List[dict], escalated: dict) -> List[dict]:
  at = next(i for i, r in enumerate(rows) if r['attack'] == 'combined') + 1
  return rows[:at] + [escalated] + rows[at:]


def _bound_note(masked: Sequence[str], escalation: Sequence[dict],
                combined: dict, worst: dict, escalated: bool) -> str:
  """The sentence that says the number is only an upper bound, and why."""
  checks_ = ', '.join(masked)
  if not escalated:
    return (f'The checks {checks_} say the gradients are masked, and '
            f'escalation is off (--noaudit_escalate): the worst case '
            f'{_pct(combined["accuracy"])} is only an upper bound, likely '
            f'far above the real robustness.')
  moves = '; '.join(f'round {e["round"]} on {e["images"]} images: '
                    f'{_pct(e["before"])} -> {_pct(e["after"])}'
                    for e in escalation)
  return (f'The checks {checks_} say the gradients are masked, so the audit '
          f'escalated ({moves or "no image left to attack"}): the worst case '
          f'went from {_pct(combined["accuracy"])} (the table\'s attacks) to '
          f'{_pct(worst["accuracy"])}. It is still only an upper bound: '
          f'attacks the audit did not try may go lower.')


def _pick_variant(picks: np.ndarray, images: np.ndarray
                  ) -> attack_suite.Variant:
  """'previous': for each image, the attacker's best image so far (looked
  up by the clean image's bytes), as a candidate of the worst case."""
  by_image = {hashlib.sha1(image.tobytes()).hexdigest(): pick
              for image, pick in zip(images, picks)}

  def run(x, y, seed, ids=None):
    del y, seed, ids
    clean = np.round(np.asarray(x) * 255.0).astype(np.uint8)
    return tf.constant(np.stack([
        by_image[hashlib.sha1(image.tobytes()).hexdigest()]
        for image in clean]))

  return attack_suite.Variant('previous', '', run,
                              settings='the worst case so far', cost=0.1)


def _escalate(replicas, images, labels, cfg, audit, outcomes, picks,
              stochastic, scale, verbose, gradient_fns, batch_size,
              values_only=False):
  """Attacks the surviving images until the worst case stops moving.

  With `values_only` (the gradients point nowhere: `gradient_direction`
  failed, and not because they are 0: `gradients` passed) APGD on finite
  differences of the model's values joins in; it
  costs 1,025 passes per step, and where the gradients are merely 0 or
  saturated the other attacks reach BPDA without it (the masking zoo).

  Returns:
    (the 'escalated' row over all images, [{'round', 'images', 'before',
    'after'}]).
  """
  ok = outcomes['combined'].copy()  # [R, N]; replaced per image as it falls.
  best = picks['combined'].copy()
  queries = audit.escalation_queries or max(10 * cfg.square_queries, 1000)
  eps, norm = cfg.aa_eps, cfg.aa_norm
  log = []
  for round_ in range(1, audit.escalation_rounds + 1):
    standing = np.flatnonzero(ok.mean(axis=0) >= 0.5)
    if not len(standing):
      break
    before = float(ok.mean())
    if verbose:
      print(f'audit: escalation round {round_}: {len(standing)} image(s) '
            f'still robust; Square with {queries} queries x 2 restarts in '
            f'every mode, APGD-DLR on the model with 2 restarts and twice the '
            f'EOT passes, APGD on its gradient smoothed over input noise' +
            (' and on finite differences of its values' if values_only
             else '') + ', and APGD on a network distilled from the model',
            flush=True)
    survivors = images[standing]
    source = distill.distill(
        replicas[0].logits_fn, data_lib.to_float_image(survivors).numpy(),
        eps, norm, mc_samples=cfg.mc_samples, extra=best[standing],
        seed=cfg.seed + round_)

    def extra(fn, modes_, source=source, survivors_best=best[standing],
              survivors=survivors):
      found = [_pick_variant(survivors_best, survivors)]
      found += attack_suite.square_variants(
          fn, cfg, modes_, stochastic, queries=queries, restarts=2,
          name='square_escalated', every=True,
          samples=max(cfg.mc_samples, cfg.square_samples))
      # APGD-DLR on the model itself, in every mode, 2 restarts and twice
      # the EOT passes: its loss is a ratio of logit differences, blind to
      # a softmax that saturates (large logits leave the cross-entropy's
      # gradient exactly 0; the DLR's stays whole).
      for mode, mode_fn in modes_.functions.items():
        passes = (1 if mode in modes_.deterministic
                  else 2 * cfg.eot_samples)
        found.append(attack_suite.Variant(
            'apgd_dlr_escalated', mode if len(modes_.names) > 1 else '',
            attack_suite.compiled(
                lambda x, y, s, i, mode_fn=mode_fn, passes=passes:
                attacks.apgd(fn, x, y, eps, norm=norm, steps=cfg.apgd_steps,
                             loss='dlr', restarts=2, seed=s, ids=i,
                             eot_samples=passes, mc_samples=cfg.mc_samples,
                             gradient_fn=mode_fn)),
            settings=f'{cfg.apgd_steps} steps, 2 restarts, EOT {passes}',
            cost=2 * (3.0 * passes * (cfg.apgd_steps + 1) + cfg.mc_samples)))
      # APGD-CE through the model's gradient averaged over small random
      # shifts of the input (EOT over input noise, s.d. a quarter of the
      # radius per pixel): a shattered gradient's fast oscillation averages
      # out, the model's own slope stays.
      sd = 0.25 * eps / (1.0 if str(norm) == 'inf' else
                         float(np.sqrt(np.prod(images.shape[1:]))))
      smoothed = lambda x: fn(x + tf.random.normal(tf.shape(x), stddev=sd))
      found.append(attack_suite.Variant(
          'smoothed_gradient', '', attack_suite.compiled(
              lambda x, y, s, i: attacks.apgd(
                  fn, x, y, eps, norm=norm, steps=cfg.apgd_steps, loss='ce',
                  restarts=2, seed=s, ids=i, eot_samples=_SMOOTHING_PASSES,
                  mc_samples=cfg.mc_samples, gradient_fn=smoothed)),
          settings=(f'APGD-CE, gradient averaged over {_SMOOTHING_PASSES} '
                    f'inputs with noise s.d. {sd:.3g}, 2 restarts'),
          cost=2 * (3.0 * _SMOOTHING_PASSES * (cfg.apgd_steps + 1) +
                    cfg.mc_samples)))
      # APGD-CE on a gradient estimated from the model's values alone
      # (finite differences along random directions, the model smoothed at
      # the radius): no gradient of the model enters it, so gradients that
      # are shattered, saturated or lie cannot mislead it, and the model's
      # own noise averages out over the queries.
      if values_only:
        estimated = eot.finite_differences(fn, 4 * sd, _DIFFERENCE_PAIRS)
        fd_steps = max(cfg.apgd_steps, 50)  # A noisy gradient needs steps.
        found.append(attack_suite.Variant(
            'finite_differences', '', attack_suite.compiled(
                lambda x, y, s, i: attacks.apgd(
                    fn, x, y, eps, norm=norm, steps=fd_steps, loss='ce',
                    restarts=1, seed=s, ids=i, eot_samples=1,
                    mc_samples=cfg.mc_samples, gradient_fn=estimated)),
            settings=(f'APGD-CE, {fd_steps} steps, on a gradient from '
                      f'{_DIFFERENCE_PAIRS} '
                      f'antithetic pairs of queries per step, smoothing s.d. '
                      f'{4 * sd:.3g}'),
            cost=(2.0 * _DIFFERENCE_PAIRS + 1) * (fd_steps + 1) +
            cfg.mc_samples))
      for loss in ('ce', 'dlr'):
        found.append(attack_suite.Variant(
            'distilled', loss, attack_suite.compiled(
                lambda x, y, s, i, loss=loss: attacks.apgd(
                    source, x, y, eps, norm=norm, steps=cfg.apgd_steps,
                    loss=loss, restarts=2, seed=s, ids=i)),
            settings=f'APGD-{loss.upper()} on a network distilled from the '
                     f'model, 2 restarts', cost=2 * 3.0 * cfg.apgd_steps))
      return found

    round_outcomes, round_picks = {}, {}
    robustness.evaluate_robustness(
        None, survivors, labels[standing],
        dataclasses.replace(cfg, attacks=(), combined='worst_case'),
        batch_size=batch_size, verbose=verbose, stochastic=stochastic,
        extra_attacks=extra, outcomes=round_outcomes, picks=round_picks,
        title=f'audit escalation {round_}', gradient_fns=gradient_fns,
        **scale(f'escalation-{round_}'))
    ok[:, standing] = round_outcomes['combined']
    best[standing] = round_picks['combined']
    after = float(ok.mean())
    log.append({'round': round_, 'images': int(len(standing)),
                'before': before, 'after': after})
    if verbose:
      print(f'audit: escalation round {round_}: worst case {_pct(before)} -> '
            f'{_pct(after)}', flush=True)
    if before - after < 0.01:
      break
  outcomes['escalated'] = ok
  size = attack_suite.image_size(
      best - data_lib.to_float_image(images).numpy())
  numbers = scoring.summarize(ok, size['l2'], size['linf'],
                              outcomes['natural'])
  row = {'attack': 'escalated', 'threat': cfg.threat_model('apgd_ce'),
         'settings': (f'worst case after {len(log)} escalation round(s): '
                      f'Square {queries} queries x 2 restarts per mode, '
                      f'APGD-DLR on the model, APGD on its noise-smoothed '
                      f'gradient (and on finite differences when the '
                      f'gradients point nowhere), APGD on a distilled '
                      f'network'),
         **numbers, 'examples': len(images),
         'repeats': ok.shape[0], 'gradient_modes': '', 'inert_modes': '',
         'seconds': 0.0}
  return row, log


def _eps_point(run, eps: float, previous: Optional[np.ndarray], spot: int,
              tolerance: float):
  """One point of the eps sweep, as a cascade over radii.

  An image broken at a smaller radius is broken at this one too (its
  adversarial example is inside this ball), so only the images still
  standing are attacked, plus a spot check: the first `spot` of the broken
  ones, attacked afresh, which an attack that works must break again (the
  eps_monotone check; with the cascade alone the curve could never rise).
  On a stochastic model an image is carried only when every one of its
  decisions was wrong, and it keeps those verdicts: that selection counts
  some luck (an image right 30% of the time is all wrong in 3 decisions
  a third of the time), so the larger radii's accuracy can be a little
  low; the first radius and any the modes table holds are fresh.

  Args:
    run: run(ids or None, outcomes) -> the rows of the sweep point on the
      sweep's images at `ids` (None: all), filling outcomes {row: bool
      `[R, n]`}.
    eps: the radius.
    previous: bool `[R, n]`, the verdicts of the point before (None: this
      is the first point, every image is attacked).
    spot: broken images attacked afresh, >= 0 (0: every image is attacked
      at every radius, no cascade).
    tolerance: the audit's tolerance (the spot check's allowance).

  Returns:
    (the point {'eps', 'accuracy', 'mc_se', 'image_se', 'examples',
    'attacked', 'spot' (None, or {'examples', 'standing', 'allowed'}:
    broken images attacked afresh, how many (mean over decisions) the fresh
    attack left standing, and the most it may)}, its verdicts bool
    `[R, n]`, the rows run returned or None when nothing was attacked).
  """
  outcomes = {}
  if previous is None or spot == 0:
    found = run(None, outcomes)
    ok = outcomes['apgd_ce']
    return ({**_point('eps', eps, _row(found, 'apgd_ce')),
             'attacked': ok.shape[1], 'spot': None}, ok, found)
  broken = ~previous.any(axis=0)
  checked = np.flatnonzero(broken)[:spot]
  ids = np.union1d(np.flatnonzero(~broken), checked)
  ok, found, fresh = previous.copy(), None, None
  if len(ids):
    found = run(ids, outcomes)
    fresh = outcomes['apgd_ce']
    standing = ~np.isin(ids, checked)
    ok[:, ids[standing]] = fresh[:, standing]
  numbers = scoring.summarize(ok, np.zeros(ok.shape[1]), np.zeros(ok.shape[1]))
  point = {'eps': eps, **{k: numbers[k] for k in
                          ('accuracy', 'mc_se', 'image_se')},
           'examples': ok.shape[1], 'attacked': len(ids), 'spot': None}
  if len(checked):
    left = float(fresh[:, np.isin(ids, checked)].mean(axis=0).sum())
    point['spot'] = {'examples': len(checked), 'standing': left,
                     'allowed': _allowed(len(checked), tolerance)}
  return point, ok, found


def _allowed(count: int, share: float, level: float = 0.025) -> int:
  """The most of `count` images that may come out standing when each does
  with probability `share`: the smallest m with P(X >= m + 1) < level for
  X ~ Binomial(count, share), so a sound attack fails the spot check with
  probability below `level`. E.g. 2 of 16 at a share of 0.02."""
  tail, m = 1.0, -1
  while tail >= level and m < count:
    m += 1
    tail -= math.comb(count, m) * share ** m * (1 - share) ** (count - m)
  return m


def _point(key: str, value, row: dict) -> dict:
  return {key: value, 'accuracy': row['accuracy'], 'mc_se': row['mc_se'],
          'image_se': row['image_se'], 'examples': row['examples']}


def _sweep_mode(rows: Sequence[dict], modes: Sequence[str],
                deterministic: Sequence[str], tolerance: float) -> str:
  """The gradient mode the sweeps attack in: the strongest (its per-mode
  rows lowest on average), or a mode without randomness (one pass per
  gradient instead of the EOT passes) that is within `tolerance` of it.
  On the LWTA recipe and the PNI row the expected mode came within 1.2
  and 2.0 points of straight-through at a third of its cost."""
  if len(modes) == 1:
    return modes[0]
  scores = {}
  for mode in modes:
    found = [r['accuracy'] for r in rows if r['attack'].endswith('/' + mode)]
    if found:
      scores[mode] = float(np.mean(found))
  if not scores:
    return modes[0]
  best = min(scores, key=scores.get)
  cheap = [m for m in scores if m in deterministic and
           scores[m] <= scores[best] + tolerance + 1e-9]
  return min(cheap, key=scores.get) if cheap else best


def markdown(result: Dict[str, object]) -> str:
  """The audit as Markdown: its notes and failed checks first, then the
  other checks, the table and the sweeps."""
  checks_ = result['checks']
  failed = [c for c in checks_ if c.get('status', 'passed') == 'failed' or
            not c['passed']]
  others = [c for c in checks_ if c not in failed]
  lines = ['# Gradient-masking audit', '', *result.get('notes', []), '']
  lines.append(f'{len(failed)} of {len(checks_)} checks failed.' if failed
               else f'No check failed ({len(checks_)} checks).')
  lines.append('')
  for check in failed + others:
    mark = ('FAILED' if check in failed else
            check.get('status') or 'passed')
    lines.append(f'- **{mark}** `{check["name"]}`: {check["detail"]}')
  worst = result.get('worst_case') or {}
  if worst:
    lines += ['', f'Strongest number found: {100 * worst["accuracy"]:.2f}% '
              f'({worst["attack"]}, {worst.get("threat", "")})' +
              (' - an upper bound only, see above.'
               if result.get('upper_bound') else '.')]
  lines += ['', f'Worst case per image over every attack '
            f'({result["examples"]} images; sweeps on the first '
            f'{result["sweep_examples"]}, gradient mode '
            f'{result["sweep_mode"]}):', '',
            robustness.markdown_table(result['rows'])]
  if result.get('compared_rows'):
    lines += [f'APGD-CE in every gradient mode on the first '
              f'{result["sweep_examples"]} images (which mode is strongest):',
              '', robustness.markdown_table(result['compared_rows'])]
  if result.get('seconds'):
    lines += ['Seconds: ' + ', '.join(
        f'{part.replace("_", " ")} {value:.0f}'
        for part, value in result['seconds'].items()), '']
  lines += ['| eps | accuracy (%) | attacked | spot check (standing / '
            'checked) |', '|---|---|---|---|']
  lines += [f'| {p["eps"]:g} | {100 * p["accuracy"]:.2f} | '
            f'{p.get("attacked", p.get("examples", ""))} | ' + (
                f'{p["spot"]["standing"]:g} / {p["spot"]["examples"]}'
                if p.get('spot') else '-') + ' |'
            for p in result['eps_sweep']]
  lines += ['', '| APGD-CE steps | accuracy (%) |', '|---|---|']
  lines += [f'| {p["steps"]} | {100 * p["accuracy"]:.2f} |'
            for p in result['steps_sweep']]
  return '\n'.join(lines) + '\n'


def write(result: Dict[str, object], output_dir: str,
          meta: Optional[Dict[str, object]] = None) -> Dict[str, str]:
  """Writes audit.md, audit.json and the per-image outcomes
  (audit_outcomes.npz) into `output_dir`; returns their paths."""
  tf.io.gfile.makedirs(output_dir)
  paths = {ext: os.path.join(output_dir, f'{AUDIT_FILE}.{ext}')
           for ext in ('md', 'json')}
  with tf.io.gfile.GFile(paths['md'], 'w') as f:
    f.write(markdown(result))
  saved = {k: v for k, v in result.items() if k != 'outcomes'}
  with tf.io.gfile.GFile(paths['json'], 'w') as f:
    json.dump({**saved, **(meta or {})}, f, indent=2, sort_keys=True)
  if result.get('outcomes'):
    paths['outcomes'] = os.path.join(output_dir, OUTCOMES_FILE)
    buffer = io.BytesIO()  # GFile cannot seek as zipfile needs.
    np.savez_compressed(buffer, **result['outcomes'])
    with tf.io.gfile.GFile(paths['outcomes'], 'wb') as f:
      f.write(buffer.getvalue())
  return paths


def load(output_dir: str) -> Optional[Dict[str, object]]:
  """The audit.json of `output_dir`, or None."""
  path = os.path.join(output_dir, f'{AUDIT_FILE}.json')
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)

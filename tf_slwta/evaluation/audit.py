"""The gradient-masking audit: is the robustness number real?

Athalye, Carlini & Wagner (2018) and Carlini et al. (2019, "On evaluating
adversarial robustness") list what a sound evaluation must show. The audit
runs them on one model, around the attack settings' aa_* threat model:

  table              every configured attack (each gradient attack in every
                     gradient mode), one gradient step, the transfer attack
                     and random noise; per image the worst case, scored by
                     fresh repeated decisions: the strongest number found.
  eps_to_zero        accuracy under APGD-CE as eps grows must reach about 0.
  eps_monotone       ... and never rise with eps.
  steps_monotone     more APGD-CE iterations must never help the model.
  single_step        FGSM must not beat the iterative attacks.
  gradient_free      Square (no gradients) must not beat the gradient
                     attacks by much: if it does, the gradients are masked.
  transfer           a transfer attack from another model must not beat the
                     white-box attacks.
  noise_floor        random noise must not beat the attacks.
  gradient_modes     (stochastic models) how much plain EOT over samples
                     would have overstated the model next to the adaptive
                     (expected / straight-through) gradients.
  monte_carlo        the table's Monte Carlo standard error is small.

"Beat" allows `tolerance` plus twice the two numbers' Monte Carlo standard
errors. The sweeps use the first `sweep_examples` images and the gradient
mode that was strongest in the table.
"""

import dataclasses
import io
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta.evaluation import attack_suite
from tf_slwta.evaluation import records
from tf_slwta.evaluation import robustness

AUDIT_FILE = 'audit'
# Per image and decision, right or not, for every row: {row: bool [R, N]}.
OUTCOMES_FILE = 'audit_outcomes.npz'
_ITERATIVE = ('pgd_linf', 'pgd_l2', 'cw', 'apgd_ce', 'apgd_dlr', 'apgd_t')
_WHITE_BOX = _ITERATIVE + ('single_step', 'fgsm')


@dataclasses.dataclass(frozen=True)
class Check:
  """One line of the checklist.

  Attributes:
    name: the check's key (see the module docstring).
    passed: True, or False when the evaluation looks unsound.
    detail: one sentence with the numbers, saying what failed and what to do.
  """
  name: str
  passed: bool
  detail: str


def _row(rows, name) -> Optional[dict]:
  return next((r for r in rows if r['attack'] == name), None)


def _beats(a: dict, b: dict, tolerance: float) -> bool:
  """Row a's accuracy is below row b's by more than the allowed slack."""
  slack = tolerance + 2 * float(np.hypot(a.get('mc_se', 0.0),
                                         b.get('mc_se', 0.0)))
  return a['accuracy'] < b['accuracy'] - slack


def _pct(value: float) -> str:
  return f'{100 * value:.1f}%'


def _strongest(rows: Sequence[dict], names: Sequence[str]) -> Optional[dict]:
  found = [r for r in rows if r['attack'] in names]
  return min(found, key=lambda r: r['accuracy']) if found else None


def checks(rows: Sequence[dict], eps_sweep: Sequence[dict],
           steps_sweep: Sequence[dict], cfg: config_lib.AuditConfig,
           stochastic: bool) -> List[Check]:
  """The checklist's verdicts from the audit's numbers.

  Args:
    rows: the audit table (`robustness.evaluate_robustness` rows, with the
      per-mode rows).
    eps_sweep: [{'eps', 'accuracy', 'mc_se'}, ...] in increasing eps.
    steps_sweep: [{'steps', 'accuracy', 'mc_se'}, ...] in increasing steps.
    cfg: the audit settings (tolerance, zero_accuracy).
    stochastic: whether the model's passes differ.

  Returns:
    [Check, ...], failures and passes alike.
  """
  tol = cfg.tolerance
  found = []
  if eps_sweep:
    last = eps_sweep[-1]
    found.append(Check(
        'eps_to_zero', last['accuracy'] <= cfg.zero_accuracy,
        f'APGD-CE at eps={last["eps"]:g} leaves {_pct(last["accuracy"])} '
        f'(must be <= {_pct(cfg.zero_accuracy)})' + (
            '' if last['accuracy'] <= cfg.zero_accuracy else
            ': an attack that cannot break a model at any radius is not '
            'finding its gradients (masking); try the adaptive gradient '
            'modes or a gradient-free attack')))
    rises = [(a, b) for a, b in zip(eps_sweep, eps_sweep[1:])
             if _beats(a, b, tol)]
    found.append(Check(
        'eps_monotone', not rises,
        'accuracy never rises with eps' if not rises else
        'accuracy rises with eps: ' + ', '.join(
            f'{_pct(a["accuracy"])} at {a["eps"]:g} -> {_pct(b["accuracy"])} '
            f'at {b["eps"]:g}' for a, b in rises)))
  if steps_sweep:
    rises = [(a, b) for a, b in zip(steps_sweep, steps_sweep[1:])
             if _beats(a, b, tol)]
    found.append(Check(
        'steps_monotone', not rises,
        'more APGD-CE steps never help the model (' + ', '.join(
            f'{s["steps"]}: {_pct(s["accuracy"])}' for s in steps_sweep) + ')'
        if not rises else 'more steps help the model: ' + ', '.join(
            f'{a["steps"]} steps {_pct(a["accuracy"])} -> {b["steps"]} steps '
            f'{_pct(b["accuracy"])}' for a, b in rises) +
        '; the attack is not converging (noisy gradients: raise '
        '--eot_samples or use another gradient mode)'))
  iterative = _strongest(rows, _ITERATIVE)
  single = _row(rows, 'single_step')
  if single and iterative:
    bad = _beats(single, iterative, tol)
    found.append(Check(
        'single_step', not bad,
        f'one gradient step {_pct(single["accuracy"])} vs the best iterative '
        f'attack ({iterative["attack"]}) {_pct(iterative["accuracy"])}' + (
            ': a single step beats many, so the iterative attacks are stuck '
            '(masked or noisy gradients)' if bad else '')))
  gradient = _strongest(rows, _WHITE_BOX)
  for name, check, what in (
      ('square', 'gradient_free', 'Square (no gradients)'),
      ('transfer', 'transfer', 'the transfer attack'),
      ('random_noise', 'noise_floor', 'random noise')):
    row = _row(rows, name)
    if row is None or gradient is None:
      continue
    # Square may come a little under the gradient attacks; noise may not.
    allowed = 2 * tol if name == 'square' else tol
    bad = _beats(row, gradient, allowed)
    found.append(Check(
        check, not bad,
        f'{what} {_pct(row["accuracy"])} vs the best gradient attack '
        f'({gradient["attack"]}) {_pct(gradient["accuracy"])}' + (
            f': {what} beats the gradients, so they are masked; the table '
            f'keeps the worst case, but the gradient attacks alone would '
            f'overstate the model' if bad else '')))
  if stochastic:
    per_mode = [r for r in rows if '/' in r['attack']]
    by_attack: Dict[str, Dict[str, dict]] = {}
    for r in per_mode:
      name, mode = r['attack'].split('/')
      by_attack.setdefault(name, {})[mode] = r
    gaps = []
    for name, modes in by_attack.items():
      if 'sample' in modes and len(modes) > 1:
        best = min(modes.values(), key=lambda r: r['accuracy'])
        gaps.append((modes['sample']['accuracy'] - best['accuracy'], name,
                     best['attack']))
    if gaps:
      gap, name, best = max(gaps)
      found.append(Check(
          'gradient_modes', gap <= tol,
          f'{name} with EOT over samples is {100 * gap:.1f} points weaker '
          f'than {best}' + (
              ': the sampled passes mask the gradient; the table keeps the '
              'adaptive worst case' if gap > tol else '')))
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


def _sweep_config(cfg: config_lib.AttackConfig, mode: str,
                  **changes) -> config_lib.AttackConfig:
  return dataclasses.replace(cfg, attacks=('apgd_ce',), gradient_modes=(mode,),
                             transfer_from='', apgd_restarts=1, **changes)


def run_audit(logits_fn: attacks.eot.LogitsFn, images: np.ndarray,
              labels: np.ndarray, attack: config_lib.AttackConfig,
              audit: config_lib.AuditConfig, *, batch_size: int = 500,
              transfer_logits_fn: Optional[attacks.eot.LogitsFn] = None,
              verbose: bool = True,
              examples: Optional[robustness.Examples] = None,
              replicas: Sequence[robustness.Replica] = (),
              shard: robustness.Shard = robustness.Shard(),
              folder: Optional[str] = None) -> Dict[str, object]:
  """Runs the whole checklist on one model.

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    images: uint8 `[N, H, W, C]`, the audited test images.
    labels: int `[N]`.
    attack: the attacks of the table and the aa_* threat model.
    audit: the checklist's settings.
    batch_size: images per attack batch.
    transfer_logits_fn: source model of the transfer attack, if any.
    verbose: progress bars and one line per sweep point.
    examples: filled in for the figures, as `evaluate_robustness` does.
    replicas, shard: how the batches spread over devices and workers (see
      `robustness.evaluate_robustness`); logits_fn may then be None.
    folder: where every part keeps its per-batch record (`batches`,
      `eps-<eps>`, `steps-<n>`), so a killed audit resumes; None keeps none
      (and needs a single worker).

  Returns:
    {'rows': the table (robustness rows, the combined worst case being the
    strongest number found, then one row per gradient mode), 'eps_sweep',
    'steps_sweep' ([{'eps' or 'steps', 'accuracy', 'mc_se', 'image_se',
    'examples'}]), 'outcomes' ({row: bool `[R, N]`}, see
    `robustness.evaluate_robustness`), 'checks' ([Check as dict]), 'failed'
    (names),
    'stochastic', 'sweep_mode' (the gradient mode the sweeps used)}.
  """
  replicas = list(replicas) or [robustness.Replica(logits_fn)]
  stochastic = attack_suite.is_stochastic(
      replicas[0].logits_fn, data_lib.to_float_image(images[:8]))
  # What the parts' records depend on besides the model (the caller's
  # folder is keyed by that): no paths, so a moved run keeps its record.
  settings = {'attack': {k: v for k, v in dataclasses.asdict(attack).items()
                         if k != 'transfer_from'},
              'transfer': transfer_logits_fn is not None,
              'audit': dataclasses.asdict(audit), 'examples': len(images),
              'batch_size': batch_size}

  def scale(part: str) -> dict:
    record = None if folder is None else records.BatchRecords(
        os.path.join(folder, part), {**settings, 'part': part})
    return {'replicas': replicas, 'shard': shard, 'record': record}

  modes = attack_suite.resolve_modes(attack, stochastic)
  names = tuple(attack.attacks)
  if transfer_logits_fn is not None and 'transfer' not in names:
    names += ('transfer',)
  table_cfg = dataclasses.replace(attack, attacks=names)

  def extra(fn, modes_, deterministic_):
    return attack_suite.single_step_variants(fn, attack, modes_,
                                             deterministic_) + [
        attack_suite.random_noise_variant(fn, attack, audit.noise_draws)]

  outcomes = {}
  rows = robustness.evaluate_robustness(
      None, images, labels, table_cfg, batch_size=batch_size,
      verbose=verbose, examples=examples,
      transfer_logits_fn=transfer_logits_fn, stochastic=stochastic,
      extra_attacks=extra, rows_per_mode=True, outcomes=outcomes,
      title='audit table', **scale('batches'))
  sweep_mode = _strongest_mode(rows, modes)
  subset = slice(0, audit.sweep_examples)
  sweep = lambda cfg, part: robustness.evaluate_robustness(
      None, images[subset], labels[subset], cfg, batch_size=batch_size,
      verbose=verbose, stochastic=stochastic, title=f'audit {part}',
      **scale(part))
  cap = 1.0 if attack.aa_norm == 'inf' else float('inf')
  eps_sweep = []
  for multiple in audit.eps_multiples:
    eps = min(attack.aa_eps * multiple, cap)
    row = _row(sweep(_sweep_config(attack, sweep_mode, aa_eps=eps,
                                   apgd_steps=min(attack.apgd_steps, 50)),
                     f'eps-{eps:g}'), 'apgd_ce')
    eps_sweep.append(_point('eps', eps, row))
    if verbose:
      print(f'audit: eps sweep, eps={eps:g}: {_pct(row["accuracy"])}',
            flush=True)
  steps_sweep = []
  for steps in audit.sweep_steps:
    row = _row(sweep(_sweep_config(attack, sweep_mode, apgd_steps=steps),
                     f'steps-{steps}'), 'apgd_ce')
    steps_sweep.append(_point('steps', steps, row))
    if verbose:
      print(f'audit: steps sweep, {steps} steps: {_pct(row["accuracy"])}',
            flush=True)
  found = checks(rows, eps_sweep, steps_sweep, audit, stochastic)
  return {'rows': rows, 'outcomes': outcomes, 'eps_sweep': eps_sweep,
          'steps_sweep': steps_sweep,
          'checks': [dataclasses.asdict(c) for c in found],
          'failed': [c.name for c in found if not c.passed],
          'stochastic': stochastic, 'sweep_mode': sweep_mode,
          'examples': len(images), 'sweep_examples': min(
              audit.sweep_examples, len(images))}


def _point(key: str, value, row: dict) -> dict:
  return {key: value, 'accuracy': row['accuracy'], 'mc_se': row['mc_se'],
          'image_se': row['image_se'], 'examples': row['examples']}


def _strongest_mode(rows: Sequence[dict], modes: Sequence[str]) -> str:
  """The gradient mode whose per-mode rows were lowest on average."""
  if len(modes) == 1:
    return modes[0]
  scores = {}
  for mode in modes:
    found = [r['accuracy'] for r in rows if r['attack'].endswith('/' + mode)]
    if found:
      scores[mode] = float(np.mean(found))
  return min(scores, key=scores.get) if scores else modes[0]


def markdown(result: Dict[str, object]) -> str:
  """The audit as Markdown: failed checks first, then the table and sweeps."""
  lines = ['# Gradient-masking audit', '', *result.get('notes', [])]
  failed = [c for c in result['checks'] if not c['passed']]
  lines.append(f'{len(failed)} of {len(result["checks"])} checks failed.'
               if failed else f'All {len(result["checks"])} checks passed.')
  lines.append('')
  for check in failed + [c for c in result['checks'] if c['passed']]:
    mark = 'FAILED' if not check['passed'] else 'passed'
    lines.append(f'- **{mark}** `{check["name"]}`: {check["detail"]}')
  lines += ['', f'Worst case per image over every attack '
            f'({result["examples"]} images; sweeps on the first '
            f'{result["sweep_examples"]}, gradient mode '
            f'{result["sweep_mode"]}):', '',
            robustness.markdown_table(result['rows']),
            '| eps | accuracy (%) |',
            '|---|---|']
  lines += [f'| {p["eps"]:g} | {100 * p["accuracy"]:.2f} |'
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

"""Robustness evaluation: natural accuracy and accuracy under every attack.

All scores use one decision rule, the argmax of the softmax averaged over
`mc_samples` passes, for clean images, for adversarial images, and inside
the attacks when they judge success. For deterministic models set
mc_samples = eot_samples = 1.
"""

import csv
import dataclasses
import io
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib

COLUMNS = ('attack', 'settings', 'accuracy', 'success_rate', 'median_l2',
           'max_linf', 'examples')
FILE_STEM = 'robustness'
# Recorded in each report; a report scored another way is never reused.
SCORING = 'robust = right on the clean and on the attacked image'
# Beside robustness.json: the examples the figures draw (see `Examples`).
EXAMPLES_FILE = 'figures_data.npz'


def attack_functions(logits_fn: attacks.eot.LogitsFn,
                     cfg: config_lib.AttackConfig,
                     seed: int = 0) -> Dict[str, attacks.combined.Attack]:
  """The configured attacks as `name -> attack(images, labels)`.

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    cfg: attack settings; `cfg.attacks` picks and orders them.
    seed: seed of PGD's random starts for this batch.

  Returns:
    An ordered dict over `cfg.attacks`.
  """
  common = dict(eot_samples=cfg.eot_samples)
  pgd_common = dict(steps=cfg.pgd_steps, restarts=cfg.pgd_restarts,
                    random_start=cfg.pgd_random_start,
                    mc_samples=cfg.mc_samples, seed=seed, **common)
  table = {
      'fgsm': lambda x, y: attacks.fgsm(logits_fn, x, y, cfg.fgsm_eps,
                                        **common),
      'pgd_linf': lambda x, y: attacks.pgd(
          logits_fn, x, y, cfg.pgd_eps, cfg.pgd_alpha, norm='inf',
          **pgd_common),
      'pgd_l2': lambda x, y: attacks.pgd(
          logits_fn, x, y, cfg.pgd_l2_eps, cfg.pgd_l2_alpha, norm=2,
          **pgd_common),
      'cw': lambda x, y: attacks.carlini_wagner_l2(
          logits_fn, x, y, c=cfg.cw_c, kappa=cfg.cw_kappa, steps=cfg.cw_steps,
          binary_search_steps=cfg.cw_binary_search_steps,
          learning_rate=cfg.cw_learning_rate, **common),
  }
  return {name: table[name] for name in cfg.attacks}


def attack_settings(name: str, cfg: config_lib.AttackConfig) -> str:
  """A short human-readable description of an attack's parameters."""
  pgd = (f'alpha={cfg.pgd_alpha:g}, steps={cfg.pgd_steps}, '
         f'restarts={cfg.pgd_restarts}')
  return {
      'natural': '-',
      'fgsm': f'Linf eps={cfg.fgsm_eps:g}',
      'pgd_linf': f'Linf eps={cfg.pgd_eps:g}, {pgd}',
      'pgd_l2': (f'L2 eps={cfg.pgd_l2_eps:g}, alpha={cfg.pgd_l2_alpha:g}, '
                 f'steps={cfg.pgd_steps}, restarts={cfg.pgd_restarts}'),
      'cw': (f'c={cfg.cw_c:g}, kappa={cfg.cw_kappa:g}, '
             f'steps={cfg.cw_steps}, searches={cfg.cw_binary_search_steps}'),
      'combined': f'{cfg.combined} of {"+".join(cfg.attacks)}',
  }[name]


@dataclasses.dataclass
class Examples:
  """What the figures need from one evaluation, filled in while it runs.

  Pass an empty one to `evaluate_robustness(..., examples=...)`; it records
  outputs the evaluation computes anyway (no attack runs twice, no extra
  forward pass). Names are 'natural', each attack, and 'combined'.

  Attributes:
    keep: how many of the first test examples to keep whole, >= 0.
    images: float32 `[n, H, W, C]` in [0, 1], the first n = min(keep, N)
      clean images.
    labels: int64 `[n]`.
    adversarial: {attack or 'combined': float32 `[n, H, W, C]` in [0, 1]};
      for a worst-case combination, the first attack's image that fooled
      the model, else the clean image.
    probabilities: {name: float32 `[n, K]`}, the mean softmax over
      `mc_samples` passes that made the decision (rows sum to 1).
    robust: {name: bool `[n]`}, the verdict the table counted (right on the
      clean and on the attacked image; for 'natural', right on the clean).
    true_class: {name: float32 `[N]` in [0, 1]}, the mean probability of the
      true class for every evaluated example (for a worst-case combination,
      that of the image it picked).
  """
  keep: int = 16
  images: Optional[np.ndarray] = None
  labels: Optional[np.ndarray] = None
  adversarial: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  probabilities: Dict[str, np.ndarray] = dataclasses.field(
      default_factory=dict)
  robust: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  true_class: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def names(self) -> List[str]:
    """'natural', the attacks and 'combined', in the table's order."""
    return list(self.true_class)

  def add(self, name: str, attacked, labels, probs: np.ndarray,
          robust: np.ndarray) -> None:
    """Records one batch of `name`; 'natural' first in every batch.

    Args:
      name: 'natural', an attack, or 'combined'.
      attacked: float32 `[B, H, W, C]`, the images scored (the clean ones
        for 'natural').
      labels: int `[B]` (tensor or array).
      probs: float32 `[B, K]`, their decision probabilities.
      robust: bool `[B]`, the verdict the table counted.
    """
    labels = np.asarray(labels)
    true = probs[np.arange(len(labels)), labels].astype(np.float32)
    self.true_class[name] = _append(self.true_class.get(name), true)
    kept = 0 if self.labels is None else len(self.labels)
    if name == 'natural':
      take = min(self.keep - kept, len(labels))
      if take > 0:
        self.images = _append(self.images, np.asarray(attacked)[:take])
        self.labels = _append(self.labels, labels[:take])
    else:  # As many as 'natural' kept so far.
      take = kept - len(self.robust.get(name, ()))
      if take > 0:
        self.adversarial[name] = _append(self.adversarial.get(name),
                                         np.asarray(attacked)[:take])
    if take > 0:
      self.probabilities[name] = _append(self.probabilities.get(name),
                                         probs[:take].astype(np.float32))
      self.robust[name] = _append(self.robust.get(name), robust[:take])

  def save(self, output_dir: str) -> str:
    """Writes the record as `<output_dir>/figures_data.npz`; returns it.

    The npz holds 'names' (str `[A]`), 'images' float32 `[n, H, W, C]` and
    'labels' int64 `[n]` (when any were kept), and one array per group and
    name, e.g. 'probabilities/fgsm' float32 `[n, K]` or 'true_class/natural'
    float32 `[N]`, as the attributes describe.
    """
    arrays = {'names': np.array(self.names)}
    if self.labels is not None:
      arrays.update(images=self.images, labels=self.labels)
    for group in ('adversarial', 'probabilities', 'robust', 'true_class'):
      arrays.update({f'{group}/{name}': value
                     for name, value in getattr(self, group).items()})
    tf.io.gfile.makedirs(output_dir)
    path = os.path.join(output_dir, EXAMPLES_FILE)
    buffer = io.BytesIO()  # GFile cannot seek as zipfile needs.
    np.savez_compressed(buffer, **arrays)
    with tf.io.gfile.GFile(path, 'wb') as f:
      f.write(buffer.getvalue())
    return path

  @classmethod
  def load(cls, output_dir: str) -> Optional['Examples']:
    """The record `save` wrote in `output_dir` (shapes as there), or None."""
    path = os.path.join(output_dir, EXAMPLES_FILE)
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path, 'rb') as f:
      saved = dict(np.load(io.BytesIO(f.read())))
    names = [str(n) for n in saved['names']]
    labels = saved.get('labels')
    record = cls(keep=0 if labels is None else len(labels),
                 images=saved.get('images'), labels=labels)
    for group in ('adversarial', 'probabilities', 'robust', 'true_class'):
      getattr(record, group).update({
          n: saved[f'{group}/{n}'] for n in names if f'{group}/{n}' in saved})
    return record


def _append(old: Optional[np.ndarray], new: np.ndarray) -> np.ndarray:
  return new if old is None else np.concatenate([old, new])


@dataclasses.dataclass
class _Tally:
  """Per-attack sums over batches."""
  correct: int = 0
  flipped: int = 0  # Clean-correct examples the attack made wrong.
  l2: List[float] = dataclasses.field(default_factory=list)
  max_linf: float = 0.0


def evaluate_robustness(logits_fn: attacks.eot.LogitsFn, images: np.ndarray,
                        labels: np.ndarray, cfg: config_lib.AttackConfig, *,
                        batch_size: int = 500, verbose: bool = True,
                        examples: Optional[Examples] = None
                        ) -> List[Dict[str, object]]:
  """Scores a model on clean images and under each configured attack.

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`; pass one
      callable (attacks are compiled per callable).
    images: uint8 `[N, H, W, C]` test images.
    labels: int `[N]`.
    cfg: attack settings.
    batch_size: images per attack batch.
    verbose: print one progress line per batch.
    examples: if given, filled in with what the figures draw (see
      `Examples`), from the outputs the evaluation computes anyway.

  Returns:
    One dict per row (natural, each attack, combined) with `COLUMNS`:
    accuracy in [0, 1] (for attacks, the share right on both the clean and
    the attacked image); success_rate = share of clean-correct examples the
    attack turned wrong, in [0, 1]; median_l2 = median L2 norm of those
    successful perturbations (None when there are none); max_linf = largest
    L-inf perturbation; examples = N.
  """
  names = ['natural', *cfg.attacks, 'combined']
  tallies = {name: _Tally() for name in names}
  batches = data_lib.as_batches(images, labels, batch_size)
  total = -(-len(images) // batch_size)
  start = time.perf_counter()
  record = examples.add if examples is not None else (lambda *_: None)
  for index, (x, y) in enumerate(batches):
    seed = cfg.seed * 1_000_003 + index
    clean_probs, clean_ok = _decide(logits_fn, x, y, cfg.mc_samples)
    _tally(tallies['natural'], x, x, clean_ok, clean_ok)
    record('natural', x, y, clean_probs, clean_ok)
    outputs, fooled, probs = {}, {}, {}
    for name, attack in attack_functions(logits_fn, cfg, seed).items():
      outputs[name] = attack(x, y)
      probs[name], ok = _decide(logits_fn, outputs[name], y, cfg.mc_samples)
      fooled[name] = ~ok
      _tally(tallies[name], x, outputs[name], clean_ok, ok)
      record(name, outputs[name], y, probs[name], clean_ok & ok)
    if cfg.combined == 'worst_case':
      # Robust only if right on the clean image and under every attack, by
      # the verdicts above (not re-drawn, which could contradict them).
      combined_x, any_fooled = attacks.worst_case(x, outputs, fooled)
      ok = clean_ok & ~any_fooled.numpy()
      # The probabilities of the images worst_case picked, picked the same way.
      combined_probs = attacks.worst_case(clean_probs, probs, fooled)[0].numpy()
    else:
      combined_x = attacks.sequential(
          x, y, attack_functions(logits_fn, cfg, seed))
      combined_probs, ok = _decide(logits_fn, combined_x, y, cfg.mc_samples)
    _tally(tallies['combined'], x, combined_x, clean_ok, ok)
    record('combined', combined_x, y, combined_probs, clean_ok & ok)
    if verbose:
      done = min((index + 1) * batch_size, len(images))
      print(f'robustness: batch {index + 1}/{total} ({done} images, '
            f'{time.perf_counter() - start:.0f} s)', flush=True)
  rows = []
  clean_correct = max(tallies['natural'].correct, 1)
  for name in names:
    tally = tallies[name]
    rows.append({
        'attack': name,
        'settings': attack_settings(name, cfg),
        'accuracy': tally.correct / len(images),
        'success_rate': (None if name == 'natural'
                         else tally.flipped / clean_correct),
        'median_l2': float(np.median(tally.l2)) if tally.l2 else None,
        'max_linf': tally.max_linf,
        'examples': len(images),
    })
  return rows


def _decide(logits_fn, x, y, mc_samples):
  """The decision rule (`attacks.predict`), keeping the probabilities.

  Returns:
    (mean probabilities float32 `[B, K]`, bool `[B]` argmax == label).
  """
  probs = attacks.mean_probabilities(logits_fn, x, mc_samples).numpy()
  return probs, probs.argmax(axis=-1) == y.numpy()


def _tally(tally: _Tally, x, adv, clean_ok: np.ndarray, ok: np.ndarray) -> None:
  delta = (tf.convert_to_tensor(adv) - x).numpy().reshape(len(ok), -1)
  flipped = clean_ok & ~ok
  # Robust means right on the clean image and on the attacked one: an
  # attack (or a fresh Monte Carlo draw) that happens to fix a wrong answer
  # earns nothing.
  tally.correct += int((clean_ok & ok).sum())
  tally.flipped += int(flipped.sum())
  tally.l2.extend(np.linalg.norm(delta[flipped], axis=1).tolist())
  tally.max_linf = max(tally.max_linf, float(np.abs(delta).max(initial=0.0)))


def _cell(column: str, value) -> str:
  if value is None:
    return '-'
  if column in ('accuracy', 'success_rate'):
    return f'{100 * value:.2f}'
  if column in ('median_l2', 'max_linf'):
    return f'{value:.4f}'
  return str(value)


_HEADERS = {'attack': 'attack', 'settings': 'settings',
            'accuracy': 'accuracy (%)', 'success_rate': 'attack success (%)',
            'median_l2': 'median L2 (successful)', 'max_linf': 'max Linf',
            'examples': 'examples'}


def table_cells(rows: Sequence[Dict[str, object]]):
  """(column headers, one list of formatted cells per row) of the table."""
  return ([_HEADERS[c] for c in COLUMNS],
          [[_cell(c, row[c]) for c in COLUMNS] for row in rows])


def markdown_table(rows: Sequence[Dict[str, object]]) -> str:
  """The rows as a Markdown table (percentages with two decimals)."""
  headers, cells = table_cells(rows)
  lines = ['| ' + ' | '.join(headers) + ' |',
           '|' + '|'.join('---' for _ in COLUMNS) + '|']
  lines.extend('| ' + ' | '.join(row) + ' |' for row in cells)
  return '\n'.join(lines) + '\n'


def write_report(rows: Sequence[Dict[str, object]], output_dir: str,
                 meta: Optional[Dict[str, object]] = None,
                 examples: Optional[Examples] = None) -> Dict[str, str]:
  """Writes robustness.md, robustness.csv and robustness.json.

  Args:
    rows: from `evaluate_robustness`.
    output_dir: folder to write into (created if needed).
    meta: extra facts for the JSON (checkpoint, data set, settings).
    examples: the same evaluation's `Examples`, saved beside the table as
      figures_data.npz, so a reused table can still be drawn.

  Returns:
    {'md': path, 'csv': path, 'json': path} (and 'examples': path).
  """
  tf.io.gfile.makedirs(output_dir)
  paths = {ext: os.path.join(output_dir, f'{FILE_STEM}.{ext}')
           for ext in ('md', 'csv', 'json')}
  with tf.io.gfile.GFile(paths['md'], 'w') as f:
    f.write(markdown_table(rows))
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
  writer.writeheader()
  writer.writerows(rows)
  with tf.io.gfile.GFile(paths['csv'], 'w') as f:
    f.write(buffer.getvalue())
  with tf.io.gfile.GFile(paths['json'], 'w') as f:
    json.dump({'rows': list(rows), **(meta or {})}, f, indent=2,
              sort_keys=True)
  if examples is not None:
    paths['examples'] = examples.save(output_dir)
  elif tf.io.gfile.exists(os.path.join(output_dir, EXAMPLES_FILE)):
    # An older evaluation's examples would be drawn beside this table.
    tf.io.gfile.remove(os.path.join(output_dir, EXAMPLES_FILE))
  return paths


def print_table(rows: Sequence[Dict[str, object]], stream=sys.stdout) -> None:
  """Prints the rows as an aligned plain-text table."""
  headers, body = table_cells(rows)
  cells = [headers] + body
  widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
  for r in cells:
    stream.write('  '.join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + '\n')
  stream.flush()


def load_report(output_dir: str, meta: Dict[str, object]):
  """The rows of an earlier robustness.json made with exactly `meta`, or None.

  Lets a grid reuse the attacks already run on the same checkpoint with the
  same settings instead of running them again.
  """
  path = os.path.join(output_dir, f'{FILE_STEM}.json')
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    saved = json.load(f)
  same = all(saved.get(k) == json.loads(json.dumps(v)) for k, v in meta.items())
  return saved['rows'] if same else None


# The seed's table columns, then what it did not report.
GRID_COLUMNS = (('natural', 'Natural'), ('pgd_linf', 'PGD Linf'),
                ('fgsm', 'FGSM'), ('cw', 'CW'), ('pgd_l2', 'PGD L2'),
                ('combined', 'Combined worst case'))


def write_grid(results: Sequence[Dict[str, object]],
               output_dir: str) -> Dict[str, str]:
  """Writes grid.md, grid.csv and grid.json: one row per run, accuracy (%).

  Args:
    results: [{'row': name, 'flagfile', 'output_dir', 'attacks': rows from
      `evaluate_robustness`}, ...].
    output_dir: folder for the three files.

  Returns:
    {'md': path, 'csv': path, 'json': path}.
  """
  table = []
  for result in results:
    by_name = {r['attack']: r for r in result['attacks']}
    table.append({'model': result['row'], **{
        title: (None if key not in by_name else
                round(100 * by_name[key]['accuracy'], 2))
        for key, title in GRID_COLUMNS}, 'flagfile': result['flagfile']})
  tf.io.gfile.makedirs(output_dir)
  paths = {ext: os.path.join(output_dir, f'grid.{ext}')
           for ext in ('md', 'csv', 'json')}
  titles = [title for _, title in GRID_COLUMNS]
  lines = ['| model | ' + ' | '.join(f'{t} (%)' for t in titles) +
           ' | flagfile |', '|' + '---|' * (len(titles) + 2)]
  for row in table:
    cells = ['-' if row[t] is None else f'{row[t]:.2f}' for t in titles]
    lines.append(f'| {row["model"]} | ' + ' | '.join(cells) +
                 f' | {row["flagfile"]} |')
  with tf.io.gfile.GFile(paths['md'], 'w') as f:
    f.write('\n'.join(lines) + '\n')
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=['model', *titles, 'flagfile'])
  writer.writeheader()
  writer.writerows(table)
  with tf.io.gfile.GFile(paths['csv'], 'w') as f:
    f.write(buffer.getvalue())
  with tf.io.gfile.GFile(paths['json'], 'w') as f:
    json.dump({'table': table, 'runs': list(results)}, f, indent=2,
              sort_keys=True)
  return paths

"""Robustness evaluation: natural accuracy and accuracy under every attack.

All scores use one decision rule, the argmax of the softmax averaged over
`mc_samples` passes, for clean images, for adversarial images, and inside
the attacks when they judge success. For deterministic models set
mc_samples = eot_samples = 1.

An image counts as robust if the decision is right on the worst image the
attacks found in its eps ball, the clean image included: for a deterministic
model, right on the clean image and on the attacked one. A stochastic model
is scored so that luck does not count twice:
  * every gradient attack runs once per gradient mode (EOT over samples,
    the layers' expectation, straight-through; `attack_suite`);
  * each candidate (the clean image and every mode's output) is judged by
    `decision_repeats` decisions; the one judged worst for the model is then
    scored by as many fresh decisions. The accuracy is the mean over those
    repeats; its Monte Carlo standard error is their spread, and the image
    standard error sqrt(p (1 - p) / N) says how far N images are from the
    whole test set;
  * the combined worst case picks among every attack's candidates the same
    way and scores its pick with fresh decisions, so an image broken only by
    the noise of one of many decisions is not counted as broken.
"""

import csv
import dataclasses
import io
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta.evaluation import attack_suite
from tf_slwta.evaluation import progress as progress_lib
from tf_slwta.evaluation import scoring

COLUMNS = ('attack', 'settings', 'accuracy', 'mc_se', 'image_se',
           'success_rate', 'median_l2', 'max_linf', 'examples')
FILE_STEM = 'robustness'
# Recorded in each report; a report scored another way is never reused.
SCORING = ('robust = right on the worst of the clean image and every attack '
           'output (all gradient modes), scored by decision_repeats fresh '
           'decisions')
# Beside robustness.json: the examples the figures draw (see `Examples`).
EXAMPLES_FILE = 'figures_data.npz'

attack_settings = attack_suite.attack_settings


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


def evaluate_robustness(logits_fn: attacks.eot.LogitsFn, images: np.ndarray,
                        labels: np.ndarray, cfg: config_lib.AttackConfig, *,
                        batch_size: int = 500, verbose: bool = True,
                        examples: Optional[Examples] = None,
                        transfer_logits_fn: Optional[
                            attacks.eot.LogitsFn] = None,
                        stochastic: Optional[bool] = None,
                        extra_variants: Sequence[
                            attack_suite.Variant] = (),
                        rows_per_mode: bool = False,
                        outcomes: Optional[Dict[str, np.ndarray]] = None
                        ) -> List[Dict[str, object]]:
  """Scores a model on clean images and under each configured attack.

  Args:
    logits_fn: images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`; pass one
      callable (attacks are compiled per callable).
    images: uint8 `[N, H, W, C]` test images.
    labels: int `[N]`.
    cfg: attack settings.
    batch_size: images per attack batch.
    verbose: show a progress bar naming the running attack, with an ETA.
    examples: if given, filled in with what the figures draw (see
      `Examples`), from the outputs the evaluation computes anyway.
    transfer_logits_fn: the source model of the 'transfer' attack.
    stochastic: whether the model's passes differ; None finds out with two
      passes on the first images. A deterministic model gets one decision
      and the 'sample' gradient mode (unless cfg.gradient_modes says else).
    extra_variants: more attacks (e.g. the audit's random noise), each a
      row of its own after the configured ones and a candidate of the
      combined worst case.
    rows_per_mode: also a row per gradient attack and mode, named like
      'pgd_linf/expected' (the worst of the clean image and that mode's
      output), after the combined row.
    outcomes: if given, filled with {row name: bool `[R, N]`, decision r on
      the image the row scored is right}, for per-image comparisons.

  Returns:
    One dict per row (natural, each attack, the extra ones, combined, then
    the per-mode rows) with `COLUMNS` (see `scoring.summarize`; examples = N) plus
    'repeats' (decisions per image) and 'gradient_modes'.
  """
  probe = data_lib.to_float_image(images[:8])
  if stochastic is None:
    stochastic = attack_suite.is_stochastic(logits_fn, probe)
  modes = attack_suite.resolve_modes(cfg, stochastic)
  repeats = cfg.decision_repeats if stochastic else 1
  variants = attack_suite.attack_variants(
      logits_fn, cfg, modes, transfer_logits_fn,
      attack_suite.deterministic_modes(logits_fn, modes, probe)
      if stochastic else modes,
      num_classes=int(logits_fn(probe[:1]).shape[-1])) + list(extra_variants)
  grouped = attack_suite.variants_by_attack(variants)
  per_mode = [v.label for v in variants
              if rows_per_mode and v.mode and len(grouped[v.name]) > 1]
  names = ['natural', *grouped, 'combined', *per_mode]
  settings = {v.name: v.settings for v in extra_variants}
  scored = {name: scoring.Row() for name in names}
  total = -(-len(images) // batch_size)
  progress = progress_lib.WorkProgress(
      total * len(variants), 'robustness', enabled=verbose, unit='run')
  record = examples.add if examples is not None else (lambda *_: None)

  def decide(images_, y_):
    return scoring.decide_repeated(logits_fn, images_, y_, cfg.mc_samples,
                                   repeats)

  def score(name, pool, x_np, y_np, y):
    """Scores the worst of `pool`, with fresh decisions if stochastic."""
    chosen, ok, probs = pool.worst(y_np)
    if stochastic:
      ok, probs = decide(chosen, y_np)
    scored[name].add(ok, x_np, chosen)
    if name not in per_mode:
      record(name, chosen, y, probs, ok.mean(axis=0) >= 0.5)

  for index, (x, y) in enumerate(data_lib.as_batches(images, labels,
                                                     batch_size)):
    seed = tf.constant(cfg.seed * 1_000_003 + index, tf.int64)
    x_np, y_np = x.numpy(), y.numpy()
    clean_ok, clean_probs = decide(x, y_np)
    scored['natural'].add(clean_ok, x_np, x_np)
    record('natural', x, y, clean_probs, clean_ok.mean(axis=0) >= 0.5)
    everything = scoring.Candidates([x_np], [clean_ok], [clean_probs])
    for name, group in grouped.items():
      pool = scoring.Candidates([x_np], [clean_ok], [clean_probs])
      for variant in group:
        progress.start(variant.label)
        output = variant.run(x, y, seed).numpy()
        progress.advance()
        verdict = decide(output, y_np)
        pool.add(output, *verdict)
        everything.add(output, *verdict)
        if variant.label in per_mode:
          score(variant.label, scoring.Candidates([x_np, output],
                                          [clean_ok, verdict[0]],
                                          [clean_probs, verdict[1]]),
                x_np, y_np, y)
      score(name, pool, x_np, y_np, y)
    if cfg.combined == 'worst_case':
      score('combined', everything, x_np, y_np, y)
    else:
      chained = x
      for group in grouped.values():  # Each attack from the last one's output.
        chained = group[0].run(chained, y, seed)
      chained = chained.numpy()
      ok, probs = decide(chained, y_np)
      score('combined', scoring.Candidates([chained], [ok], [probs]), x_np,
            y_np, y)
  progress.close()
  natural = None
  table = []
  for name in names:
    row = scored[name]
    if outcomes is not None:
      outcomes[name] = np.concatenate(row.ok, axis=1)
    numbers = scoring.summarize(np.concatenate(row.ok, axis=1),
                        np.concatenate(row.l2), np.concatenate(row.linf),
                        natural)
    natural = numbers['accuracy'] if natural is None else natural
    base = name.split('/')[0]
    text = settings.get(base) or attack_settings(base, cfg)
    if name == 'combined' and cfg.combined == 'worst_case':
      text = f'worst case of {"+".join(grouped)}'

    table.append({'attack': name, 'settings': text,
                  **numbers, 'examples': len(images), 'repeats': repeats,
                  'gradient_modes': ','.join(modes)})
  return table


def _cell(column: str, value) -> str:
  if value is None:
    return '-'
  if column in ('accuracy', 'success_rate'):
    return f'{100 * value:.2f}'
  if column in ('mc_se', 'image_se'):
    return f'{100 * value:.2f}'
  if column in ('median_l2', 'max_linf'):
    return f'{value:.4f}'
  return str(value)


_HEADERS = {'attack': 'attack', 'settings': 'settings',
            'accuracy': 'accuracy (%)', 'mc_se': '± MC s.e.',
            'image_se': '± image s.e.',
            'success_rate': 'attack success (%)',
            'median_l2': 'median L2 (successful)', 'max_linf': 'max Linf',
            'examples': 'examples'}


def table_cells(rows: Sequence[Dict[str, object]]):
  """(column headers, one list of formatted cells per row) of the table."""
  return ([_HEADERS[c] for c in COLUMNS],
          [[_cell(c, row.get(c)) for c in COLUMNS] for row in rows])


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
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction='ignore')
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


def write_summaries(rows: Sequence[Dict[str, object]], summary_dir: str,
                    step: int) -> None:
  """Logs every row's accuracy to TensorBoard as `robustness/<attack>`.

  Args:
    rows: from `evaluate_robustness`.
    summary_dir: the run's TensorBoard folder.
    step: the step to log at (the evaluated checkpoint's).
  """
  writer = tf.summary.create_file_writer(summary_dir)
  with writer.as_default(step=step):
    for row in rows:
      tf.summary.scalar(f'robustness/{row["attack"]}', row['accuracy'])
  writer.close()


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

"""One HTML page per run: its tables and every figure, also in TensorBoard.

`write_report` gathers whatever results a run's output_dir holds, draws
their figures under `<output_dir>/figures/` and writes
`<output_dir>/report.html`:
  * settings (data set, model, checkpoint, attack settings);
  * the robustness table, from robustness.json, with the attack grids, the
    true-class histograms and the correct-and-fooled grid drawn from
    figures_data.npz (written beside it by the evaluation);
  * learning curves, from metrics.jsonl (training);
  * LWTA winner shares and IBP utilities, when given a model that has
    such layers (kept from an earlier run otherwise);
  * certified accuracy against radius, from certify.json.
It runs after every evaluate, certify, train and grid row, so the page
always shows everything the folder holds. The same images go to
TensorBoard (`<output_dir>/summaries`, tag `figures/<name>`). The page links
the PNGs by relative path: keep the folder together to move it.

`write_grid_report` writes the grid's page: its table and a link to each
row's report.
"""

import html
import json
import os
import shlex
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.evaluation import audit
from tf_slwta.evaluation import figures
from tf_slwta.evaluation import records
from tf_slwta.evaluation import robustness

REPORT_FILE = 'report.html'
GRID_REPORT_FILE = 'grid.html'
FIGURES_DIR = 'figures'
# Test images the LWTA winner shares are counted on.
WINNER_IMAGES = 256

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1280px; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.9em; }
.warning { background: #fff3cd; border: 2px solid #d39e00; padding: 0.5em 1em; }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  """An HTML table; every cell is escaped."""
  head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in headers)
  body = ''.join(
      '<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) +
      '</tr>\n' for row in rows)
  return f'<table>\n<tr>{head}</tr>\n{body}</table>\n'


def _figure_html(output_dir: str, path: str, caption: str) -> str:
  src = html.escape(os.path.relpath(path, output_dir).replace(os.sep, '/'))
  text = html.escape(caption)
  return (f'<figure><img src="{src}" alt="{text}">'
          f'<figcaption>{text}</figcaption></figure>\n')


def _page(title: str, body: str) -> str:
  return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
          f'<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n'
          f'</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}'
          '</body>\n</html>\n')


def _read_json(path: str):
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _read_metrics(path: str) -> List[Dict[str, float]]:
  """metrics.jsonl's intact records (a damaged line is left out)."""
  return run_folder.RunFolder(os.path.dirname(path)).read_metrics()


def checkpoint_step(output_dir: str) -> int:
  """The global step of the run's latest checkpoint (ckpt-<step>), or 0."""
  latest = tf.train.latest_checkpoint(run_folder.checkpoint_dir(output_dir))
  try:
    return int(latest.rsplit('-', 1)[1]) if latest else 0
  except ValueError:
    return 0


def write_summaries(summary_dir: str, paths: Sequence[str], step: int) -> None:
  """Writes PNG files to TensorBoard as images tagged `figures/<file stem>`.

  Args:
    summary_dir: the run's TensorBoard folder.
    paths: PNG files.
    step: the step the images are logged at (the checkpoint's).
  """
  writer = tf.summary.create_file_writer(summary_dir)
  with writer.as_default(step=step):
    for path in paths:
      image = tf.image.decode_png(tf.io.read_file(path), channels=3)
      name = os.path.splitext(os.path.basename(path))[0]
      tf.summary.image(f'figures/{name}', image[None])
  writer.close()


def _settings_section(config: config_lib.ExperimentConfig,
                      saved: Optional[dict]) -> str:
  """Data set, model, checkpoint and attack settings as a two-column table.

  The test-image count, checkpoint and attack settings are those the
  robustness table was made with (robustness.json), not this call's flags;
  a table made on an older checkpoint than the latest is flagged.
  """
  model = config.model
  parts = [model.name, model.activation if model.activation != 'relu' else '',
           f'PNI {model.pni}' if model.pni != 'none' else '',
           'IBP' if model.ibp else '']
  described = ', '.join(p for p in parts if p)
  latest = tf.train.latest_checkpoint(run_folder.checkpoint_dir(config.output_dir))
  saved = saved or {}
  checkpoint = saved.get('checkpoint') or latest
  attack = saved.get('attack_settings') or config.to_dict()['attack']
  examples = saved.get('eval_examples', config.data.eval_examples)
  mixture = ', '.join(f'{b}:{w:g}' for b, w in config.train.mixture) or 'clean'
  status = run_folder.training_status(config.output_dir)
  length = (f'{config.train.epochs} epochs' if status is None or
            status.finished else status.description)
  rows = [('data set', config.data.dataset),
          ('test images', examples or 'all'),
          ('model', described), ('training', f'{length}, mixture {mixture}'),
          ('checkpoint', checkpoint or 'none'),
          ('attacks', ', '.join(attack['attacks']) or 'none'),
          ('attack settings', ', '.join(f'{k}={v}' for k, v in
                                        sorted(attack.items())
                                        if k != 'attacks'))]
  stale = ''
  if saved.get('checkpoint') and latest and saved['checkpoint'] != latest:
    stale = (f'<p><strong>The robustness table below was made on '
             f'{html.escape(saved["checkpoint"])}, not on the latest '
             f'checkpoint {html.escape(latest)}: run --mode=evaluate to '
             f'score the latest.</strong></p>\n')
  return '<h2>Settings</h2>\n' + _table(('setting', 'value'), rows) + stale


def _unfinished_warning(output_dir: str) -> str:
  """A warning box for a run whose training stopped part-way, or ''."""
  status = run_folder.training_status(output_dir)
  if status is None or status.warning is None:
    return ''
  return (f'<div class="warning"><p><b>Warning: training is not '
          f'finished</b> ({html.escape(status.description)}). Everything on '
          f'this page is for the model as it stands; run <code>python '
          f'main.py {html.escape(shlex.quote("--output_dir=" + output_dir))}'
          f'</code> to finish it.</p></div>\n')


def _robustness_section(output_dir: str, figures_dir: str, saved: dict,
                        class_names: Sequence[str]) -> Tuple[str, List[str]]:
  rows = saved['rows']
  headers, cells = robustness.table_cells(rows)
  scoring = html.escape(saved.get('scoring', ''))
  notes = ''.join(f'<p>{html.escape(note)}</p>\n'
                  for note in saved.get('notes', []))
  body = (f'<h2>Robustness</h2>\n<p>Scoring: {scoring}; decisions by the '
          'mean probabilities over mc_samples passes.</p>\n'
          + _table(headers, cells) + notes)
  examples = robustness.Examples.load(output_dir)
  if examples is None:
    return body + ('<p>No figures_data.npz beside the table (an evaluation '
                   'older than the figures): run --mode=evaluate to draw '
                   'them.</p>\n'), []
  settings = {r['attack']: r['settings'] for r in rows}
  paths = figures.robustness_figures(figures_dir, examples, settings,
                                     class_names)
  n = 0 if examples.labels is None else min(len(examples.labels),
                                            figures.GRID_COLUMNS)
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem.startswith('attack_'):
      name = stem[len('attack_'):]
      caption = (f'{figures.title_of(name)} ({settings.get(name, "")}): the '
                 f'first {n} test images, their adversarial images and the '
                 'perturbation amplified by k (0.5 + k * delta), with true '
                 'and predicted classes (green right, red wrong).')
    elif stem == 'true_class_histograms':
      count = len(examples.true_class['natural'])
      caption = ('Probability the model gives the true class, clean and '
                 f'under each attack, over all {count} evaluated images.')
    else:
      caption = ('Adversarial examples the model still classified correctly '
                 '(left) and ones that fooled it (right), among the kept '
                 'images that were right when clean.')
    body += _figure_html(output_dir, path, caption)
  return body, paths


def _learning_section(output_dir: str, figures_dir: str
                      ) -> Tuple[str, List[str]]:
  records = _read_metrics(os.path.join(output_dir, 'metrics.jsonl'))
  if not records:
    return '', []
  path = figures.learning_curves(
      os.path.join(figures_dir, 'learning_curves.png'), records)
  last = records[-1]
  keys = ('train/loss', 'train/accuracy', 'test/loss', 'test/accuracy')
  final = ', '.join(f'{k} {last[k]:.4f}' for k in keys if k in last)
  return ('<h2>Training</h2>\n' + f'<p>Epoch {last.get("epoch")}: '
          f'{html.escape(final)}.</p>\n' + _figure_html(
              output_dir, path, 'Loss, accuracy and KL per epoch '
              '(from metrics.jsonl).')), [path]


def _model_section(output_dir: str, figures_dir: str,
                   model: Optional[keras.Model],
                   images: Optional[np.ndarray]) -> Tuple[str, List[str]]:
  captions = {
      'lwta_winner_shares': 'Stochastic LWTA: share of (image, position, '
                            'block) places each competitor wins at test time, '
                            f'per layer, on the first {WINNER_IMAGES} test '
                            'images (fewer if fewer are evaluated).',
      'ibp_utilities': 'IBP utilities of every layer, sorted, against the '
                       'pruning threshold: those at or under it are pruned.'}
  drawn = (figures.model_figures(figures_dir, model, images)
           if model is not None else [])
  # Without a model, keep what an earlier run of this folder drew.
  existing = [os.path.join(figures_dir, f'{stem}.png') for stem in captions]
  present = drawn or [p for p in existing if tf.io.gfile.exists(p)]
  if not present:
    return '', drawn
  body = '<h2>Stochastic LWTA and IBP</h2>\n'
  pruned = _read_json(os.path.join(output_dir, 'ibp_pruned.json'))
  if pruned:
    body += _table(('IBP layer', 'blocks pruned (%)'),
                   [(k, f'{100 * v:.1f}') for k, v in pruned.items()])
  for path in present:
    body += _figure_html(output_dir, path, captions[
        os.path.splitext(os.path.basename(path))[0]])
  return body, drawn


def _certify_section(output_dir: str, figures_dir: str
                     ) -> Tuple[str, List[str]]:
  result = _read_json(os.path.join(output_dir, 'certify.json'))
  if not result:
    return '', []
  path = figures.certified_accuracy(
      os.path.join(figures_dir, 'certified_accuracy.png'), result)
  table = _table(('L2 radius', 'certified accuracy (%)'),
                 [(r, f'{100 * v:.2f}') for r, v in
                  result['certified_accuracy'].items()])
  return ('<h2>Randomized smoothing</h2>\n' + table +
          f'<p>PREDICT accuracy {100 * result["predict_accuracy"]:.2f}%, '
          f'abstains {100 * result["predict_abstain_rate"]:.2f}%; CERTIFY '
          f'abstains {100 * result["certify_abstain_rate"]:.2f}%.</p>\n' +
          _figure_html(output_dir, path, 'Certified accuracy against the L2 '
                       'radius: the share of images certified correct at '
                       'least that far (points: the table radii).')), [path]


def _audit_section(output_dir: str) -> Tuple[str, str]:
  """(warning for the top of the page, the checklist section) from
  audit.json; empty strings when the run was never audited."""
  saved = _read_json(os.path.join(output_dir, f'{audit.AUDIT_FILE}.json'))
  if not saved:
    return '', ''
  checks = saved.get('checks', [])
  failed = [c for c in checks if not c['passed']]
  where = html.escape(str(saved.get('checkpoint')))
  warning = ''
  if failed:
    items = ''.join(f'<li><b>{html.escape(c["name"])}</b>: '
                    f'{html.escape(c["detail"])}</li>\n' for c in failed)
    notes = ''.join(f'<p>{html.escape(n)}</p>\n'
                    for n in saved.get('notes', []))
    warning = (f'<div class="warning"><p><b>Warning: {len(failed)} of '
               f'{len(checks)} gradient-masking checks failed</b> (audit of '
               f'{where}). The robustness table keeps the worst case found, '
               f'but read it with these in mind:</p>\n<ul>\n{items}</ul>'
               f'{notes}</div>\n')
  rows = [('FAILED' if not c['passed'] else c.get('status') or 'passed',
           c['name'], c['detail'])
          for c in checks]
  sweeps = _table(['eps', 'accuracy (%)'], [
      (f'{p["eps"]:g}', f'{100 * p["accuracy"]:.2f}')
      for p in saved.get('eps_sweep', [])]) + _table(
          ['APGD-CE steps', 'accuracy (%)'],
          [(p['steps'], f'{100 * p["accuracy"]:.2f}')
           for p in saved.get('steps_sweep', [])])
  section = (f'<h2>Gradient-masking audit</h2>\n<p>Checkpoint {where}; '
             f'{saved.get("examples")} images, sweeps on the first '
             f'{saved.get("sweep_examples")} with the '
             f'{html.escape(str(saved.get("sweep_mode")))} gradient mode '
             f'(audit.md, audit.json).</p>\n'
             + _table(['result', 'check', 'numbers'], rows) + sweeps)
  return warning, section


def _history_section(output_dir: str) -> str:
  """Every evaluation kept under `evaluations/`, newest first, with links;
  the tables above are the latest one's."""
  root = os.path.join(output_dir, records.EVALUATIONS_DIR)
  if not tf.io.gfile.isdir(root):
    return ''
  found = []
  for name in tf.io.gfile.listdir(root):
    name = name.rstrip('/')
    saved = _read_json(os.path.join(root, name,
                                    f'{robustness.FILE_STEM}.json'))
    if not saved:
      continue  # Unfinished: its batches wait to be resumed.
    path = os.path.join(root, name, f'{robustness.FILE_STEM}.json')
    rows = {r['attack']: r for r in saved.get('rows', [])}
    found.append((tf.io.gfile.stat(path).mtime_nsec, name, saved,
                  rows.get('combined', {})))
  if not found:
    return ''
  lines = []
  for _, name, saved, combined in sorted(found, key=lambda f: f[0],
                                        reverse=True):
    attack = saved.get('attack_settings', {})
    link = html.escape(
        f'{records.EVALUATIONS_DIR}/{name}/{robustness.FILE_STEM}.md')
    worst = combined.get('accuracy')
    cells = [html.escape(str(saved.get('checkpoint'))),
             html.escape(','.join(attack.get('attacks', []))),
             html.escape(str(combined.get('threat', '-'))),
             str(combined.get('examples', saved.get('eval_examples', '-'))),
             '-' if worst is None else f'{100 * worst:.2f}']
    lines.append(f'<tr><td><a href="{link}">{html.escape(name)}</a></td>' +
                 ''.join(f'<td>{c}</td>' for c in cells) + '</tr>\n')
  return ('<h2>Every evaluation of this run</h2>\n<p>Newest first; the '
          'tables above are the newest one\'s.</p>\n<table>\n<tr><th>'
          'evaluation</th><th>checkpoint</th><th>attacks</th><th>threat '
          'model</th><th>images</th><th>worst case (%)</th></tr>\n' +
          ''.join(lines) + '</table>\n')


def write_report(config: config_lib.ExperimentConfig,
                 model: Optional[keras.Model] = None,
                 tensorboard: bool = True) -> str:
  """Draws the run's figures and writes `<output_dir>/report.html`.

  Args:
    config: the run's settings; `config.output_dir` holds its results.
    model: the trained model, for the LWTA and IBP figures (None: keep the
      ones an earlier call drew, if any).
    tensorboard: also log the figures drawn as images to
      `<output_dir>/summaries` at the checkpoint's step.

  Returns:
    The path of report.html.
  """
  output_dir = config.output_dir
  figures_dir = os.path.join(output_dir, FIGURES_DIR)
  info = data_lib.dataset_info(config.data.dataset)
  saved = _read_json(os.path.join(output_dir, f'{robustness.FILE_STEM}.json'))
  images = None
  if model is not None:
    test_images, _ = data_lib.load_arrays(config.data, 'test')
    images = data_lib.to_float_image(test_images[:WINNER_IMAGES]).numpy()
  warning, audit_html = _audit_section(output_dir)
  body = _unfinished_warning(output_dir) + warning
  body, drawn = body + _settings_section(config, saved), []
  for section, paths in (
      _robustness_section(output_dir, figures_dir, saved, info.class_names)
      if saved else ('', []),
      (audit_html, []),
      (_history_section(output_dir), []),
      _learning_section(output_dir, figures_dir),
      _model_section(output_dir, figures_dir, model, images),
      _certify_section(output_dir, figures_dir)):
    body += section
    drawn += paths
  if not drawn and not saved:
    body += '<p>No results yet: train or evaluate into this folder.</p>\n'
  path = os.path.join(output_dir, REPORT_FILE)
  run_folder.atomic_write(path, _page(f'tf_slwta report: {output_dir}', body))
  if tensorboard and drawn:
    write_summaries(os.path.join(output_dir, 'summaries'), drawn,
                    checkpoint_step(output_dir))
  return path


def write_grid_report(grid_json: str) -> str:
  """Writes grid.html beside grid.json: the grid's table, rows linked.

  Args:
    grid_json: the path `robustness.write_grid` returned as 'json'.

  Returns:
    The path of grid.html.
  """
  folder = os.path.dirname(grid_json)
  saved = _read_json(grid_json)
  titles = [title for _, title in robustness.GRID_COLUMNS]
  rows = [[row['model'], *('-' if row[t] is None else f'{row[t]:.2f}'
                           for t in titles), row.get('images', '-'),
           row.get('threat models', '-'), row['flagfile']]
          for row in saved['table']]
  links = ''
  for run in saved['runs']:
    href = os.path.relpath(os.path.join(run['output_dir'], REPORT_FILE), folder)
    links += (f'<li><a href="{html.escape(href)}">{html.escape(run["row"])}'
              '</a></li>\n')
  body = (_table(['model', *(f'{t} (%)' for t in titles), 'images',
                 'threat models', 'flagfile'], rows) +
          f'<h2>Reports of the rows</h2>\n<ul>\n{links}</ul>\n')
  path = os.path.join(folder, GRID_REPORT_FILE)
  run_folder.atomic_write(path, _page('tf_slwta grid', body))
  return path

"""Figures of an evaluation, as PNG files (matplotlib, no display needed).

What the attacks do, drawn as the seed drew it:
  * `attack_grid`: original, adversarial and amplified perturbation of the
    first test images, with true and predicted class names (one per attack,
    and one for all attacks combined);
  * `true_class_histograms`: the probability the model gives the true class,
    clean and under each attack, in one figure;
  * `correct_and_fooled`: adversarial examples the model still classified
    correctly beside ones it got wrong;
  * `lwta_winner_shares`, `ibp_utilities`: for SLWTA models, how often each
    competitor wins and which blocks the IBP pruned;
  * `certified_accuracy`: randomized smoothing's certified accuracy against
    the L2 radius;
  * `learning_curves`: loss, accuracy and KL per epoch.

Every function draws on its own `matplotlib.figure.Figure` with the Agg
canvas (no pyplot, no global state, no display) at a fixed size and `DPI`,
so a figure's pixel size is `SIZES[kind]` whatever it shows, and returns
the path it wrote.
"""

import io
import os
from typing import Dict, List, Mapping, Sequence

import keras
from matplotlib.backends import backend_agg
from matplotlib import figure as figure_lib
from matplotlib import ticker
import numpy as np
import tensorflow as tf

from tf_slwta.layers import ibp as ibp_lib
from tf_slwta.layers import lwta as lwta_lib

DPI = 100
# Images per attack grid.
GRID_COLUMNS = 8
# Width and height in pixels of each kind of figure.
SIZES = {
    'attack_grid': (1200, 520),
    'true_class_histograms': (1200, 640),
    'correct_and_fooled': (1200, 700),
    'lwta_winner_shares': (1000, 420),
    'ibp_utilities': (800, 480),
    'certified_accuracy': (700, 500),
    'learning_curves': (1500, 450),
}
TITLES = {'natural': 'Clean', 'fgsm': 'FGSM', 'pgd_linf': 'PGD L-inf',
          'pgd_l2': 'PGD L2', 'cw': 'Carlini-Wagner L2',
          'combined': 'All attacks combined'}
_RIGHT, _WRONG = '#1a7f37', '#cf222e'  # Green and red labels.


def title_of(name: str) -> str:
  """The readable name of 'natural', an attack, or 'combined'."""
  return TITLES.get(name, name)


def _figure(kind: str) -> figure_lib.Figure:
  width, height = SIZES[kind]
  fig = figure_lib.Figure(figsize=(width / DPI, height / DPI), dpi=DPI,
                          layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  return fig


def _save(fig: figure_lib.Figure, path: str) -> str:
  tf.io.gfile.makedirs(os.path.dirname(path) or '.')
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=DPI)
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(buffer.getvalue())
  return path


def _show(ax, image: np.ndarray) -> None:
  """Draws a float image `[H, W, C]` in [0, 1] (C = 1 or 3) without ticks."""
  image = np.clip(image, 0.0, 1.0)
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap='gray', vmin=0.0, vmax=1.0)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])


# Under half a grey level of an 8-bit image a perturbation is invisible;
# amplifying it would only show float rounding.
_INVISIBLE = 0.5 / 255


def amplified(delta: np.ndarray):
  """A perturbation scaled to fill the colour range.

  Args:
    delta: float `[H, W, C]`, adversarial minus original.

  Returns:
    (0.5 + k * delta in [0, 1], k = 1 / (2 max|delta|)), or (all 0.5, 0.0)
    when max|delta| is under half a grey level.
  """
  peak = float(np.abs(delta).max())
  if peak < _INVISIBLE:
    return np.full_like(delta, 0.5), 0.0
  factor = 0.5 / peak
  return 0.5 + factor * delta, factor


def attack_grid(path: str, name: str, settings: str, images: np.ndarray,
                adversarial: np.ndarray, labels: np.ndarray,
                clean_probabilities: np.ndarray,
                adversarial_probabilities: np.ndarray,
                class_names: Sequence[str], columns: int = GRID_COLUMNS) -> str:
  """Original, adversarial and amplified perturbation of the first images.

  Three rows: the original with its true and predicted class, the
  adversarial image with its predicted class and that class's probability
  (green if still the true class, red if not), and the perturbation
  amplified by k (0.5 + k * delta, k given under each image).

  Args:
    path: PNG file to write.
    name: the attack ('fgsm', 'pgd_linf', 'pgd_l2', 'cw', 'combined').
    settings: its parameters, for the title.
    images: float32 `[n, H, W, C]` in [0, 1], clean.
    adversarial: float32 `[n, H, W, C]` in [0, 1].
    labels: int `[n]`.
    clean_probabilities, adversarial_probabilities: float `[n, K]`, the
      decision probabilities.
    class_names: K names.
    columns: images drawn, the first `columns` of n.

  Returns:
    `path`; the image is `SIZES['attack_grid']` pixels.
  """
  fig = _figure('attack_grid')
  fig.suptitle(f'{title_of(name)} ({settings}): original, adversarial, '
               'perturbation x k', fontsize=11)
  axes = fig.subplots(3, columns, squeeze=False)
  for ax in axes.ravel():
    ax.set_axis_off()
  for i in range(min(columns, len(labels))):
    label = int(labels[i])
    clean = int(np.argmax(clean_probabilities[i]))
    adv = int(np.argmax(adversarial_probabilities[i]))
    top, middle, bottom = axes[:, i]
    for ax in (top, middle, bottom):
      ax.set_axis_on()
    _show(top, images[i])
    top.set_title(f'true: {class_names[label]}\nclean: {class_names[clean]}',
                  fontsize=8, color=_RIGHT if clean == label else _WRONG)
    _show(middle, adversarial[i])
    middle.set_title(f'adv: {class_names[adv]}\n'
                     f'p={adversarial_probabilities[i][adv]:.2f}', fontsize=8,
                     color=_RIGHT if adv == label else _WRONG)
    delta = adversarial[i] - images[i]
    picture, factor = amplified(delta)
    _show(bottom, picture)
    peak = float(np.abs(delta).max())
    bottom.set_title(f'max|\u03b4| {peak:.2g}, k {factor:.3g}' if factor else
                     f'no visible change\nmax|\u03b4| {peak:.1g}', fontsize=8)
  for ax, text in zip(axes[:, 0], ('original', 'adversarial', 'perturbation')):
    ax.set_ylabel(text, fontsize=9)
  return _save(fig, path)


def true_class_histograms(path: str,
                          true_class: Mapping[str, np.ndarray]) -> str:
  """Histograms of the probability given to the true class, one panel each.

  Args:
    path: PNG file to write.
    true_class: {'natural', attacks..., 'combined': float `[N]` in [0, 1]},
      the mean probability of the true class per example.

  Returns:
    `path`; the image is `SIZES['true_class_histograms']` pixels.
  """
  fig = _figure('true_class_histograms')
  fig.suptitle('Probability given to the true class (counts on a log scale)',
               fontsize=11)
  columns = min(3, len(true_class))
  rows = -(-len(true_class) // columns)
  axes = fig.subplots(rows, columns, squeeze=False, sharex=True)
  for ax in axes.ravel():
    ax.set_axis_off()
  bins = np.linspace(0.0, 1.0, 21)
  for ax, (name, values) in zip(axes.ravel(), true_class.items()):
    ax.set_axis_on()
    ax.hist(values, bins=bins, log=True,
            color='#0969da' if name == 'natural' else '#bc4c00')
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_title(f'{title_of(name)}: mean {np.mean(values):.2f}, '
                 f'{len(values)} images', fontsize=9)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel('probability of the true class', fontsize=8)
    ax.set_ylabel('images', fontsize=8)
    ax.tick_params(labelsize=7)
  return _save(fig, path)


def correct_and_fooled(path: str, examples, class_names: Sequence[str],
                       per_side: int = 12) -> str:
  """Adversarial examples still classified correctly beside fooled ones.

  Both sides are taken from the images that were right when clean, in turn
  from each attack (the combination is left out: it repeats them). Each
  image is titled with its attack, true class and predicted class.

  Args:
    path: PNG file to write.
    examples: a `robustness.Examples` with kept images.
    class_names: K names.
    per_side: images per side (drawn 3 rows high).

  Returns:
    `path`; the image is `SIZES['correct_and_fooled']` pixels.
  """
  attacks = [n for n in examples.adversarial if n != 'combined']
  clean_ok = examples.robust['natural']
  sides = {'Still classified correctly': [], 'Fooled': []}
  for index in range(len(examples.labels)):
    for name in attacks:
      side = ('Still classified correctly' if examples.robust[name][index]
              else 'Fooled' if clean_ok[index] else None)
      if side and len(sides[side]) < per_side:
        sides[side].append((name, index))
  fig = _figure('correct_and_fooled')
  fig.suptitle('Adversarial examples: correctly and incorrectly classified',
               fontsize=11)
  rows, columns = 3, -(-per_side // 3)
  for subfig, (side, chosen) in zip(fig.subfigures(1, 2, wspace=0.05),
                                    sides.items()):
    subfig.suptitle(f'{side} ({len(chosen)} shown)', fontsize=10,
                    color=_RIGHT if side.startswith('Still') else _WRONG)
    axes = subfig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
      ax.set_axis_off()
    if not chosen:
      axes[1, columns // 2].text(0.5, 0.5, 'none among the kept examples',
                                 ha='center', va='center', fontsize=9,
                                 transform=axes[1, columns // 2].transAxes)
    for ax, (name, index) in zip(axes.ravel(), chosen):
      ax.set_axis_on()
      _show(ax, examples.adversarial[name][index])
      label = int(examples.labels[index])
      predicted = int(np.argmax(examples.probabilities[name][index]))
      ax.set_title(f'{title_of(name)}\ntrue: {class_names[label]}\n'
                   f'pred: {class_names[predicted]}', fontsize=7,
                   color=_RIGHT if predicted == label else _WRONG)
  return _save(fig, path)


def winner_shares(model: keras.Model,
                  images: np.ndarray) -> Dict[str, np.ndarray]:
  """How often each competitor wins, per LWTA layer, at test time.

  Runs the model's graph up to every LWTA layer's input and draws that
  layer's winners with its own `winners` (sampling on, test temperature),
  as the model does at test time.

  Args:
    model: a functional Keras model with `LWTA` layers.
    images: float32 `[B, H, W, C]` in [0, 1].

  Returns:
    {layer name: float `[U]`, the share of (example, position, block)
    places where competitor u wins; sums to 1}; empty without LWTA layers.
  """
  layers = lwta_lib.lwta_layers(model)
  if not layers:
    return {}
  inputs = keras.Model(model.input, [l.input for l in layers])(
      images, training=False)
  if len(layers) == 1:
    inputs = [inputs]
  shares = {}
  for layer, x in zip(layers, inputs):
    blocks = tf.reshape(layer.blocks(x), [-1, layer.competitors])
    won = tf.argmax(layer.winners(blocks, training=False), axis=-1)
    counts = np.bincount(won.numpy(), minlength=layer.competitors)
    shares[layer.name] = counts / counts.sum()
  return shares


def lwta_winner_shares(path: str, shares: Mapping[str, np.ndarray]) -> str:
  """Bar charts of the share of wins per competitor, one per LWTA layer.

  Args:
    path: PNG file to write.
    shares: from `winner_shares` (non-empty).

  Returns:
    `path`; the image is `SIZES['lwta_winner_shares']` pixels.
  """
  fig = _figure('lwta_winner_shares')
  fig.suptitle('Stochastic LWTA: share of wins per competitor '
               '(dashed: uniform)', fontsize=11)
  columns = min(len(shares), 6)
  axes = fig.subplots(-(-len(shares) // columns), columns, squeeze=False,
                      sharey=True)
  for ax in axes.ravel():
    ax.set_axis_off()
  for ax, (name, share) in zip(axes.ravel(), shares.items()):
    ax.set_axis_on()
    ax.bar(np.arange(len(share)), share, color='#8250df')
    ax.axhline(1.0 / len(share), color='k', linestyle='--', linewidth=1)
    ax.set_xticks(np.arange(len(share)))
    ax.set_ylim(0.0, 1.0)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel('competitor', fontsize=8)
    ax.tick_params(labelsize=7)
  axes[0, 0].set_ylabel('share of wins', fontsize=8)
  return _save(fig, path)


def utilities(model: keras.Model) -> Dict[str, np.ndarray]:
  """{IBP layer name: float `[M]`, its utilities sigmoid(t), flattened}.

  M is the layer's number of blocks.
  """
  return {l.name: tf.sigmoid(l.utility_logits).numpy().ravel()
          for l in ibp_lib.ibp_layers(model)}


def ibp_utilities(path: str, values: Mapping[str, np.ndarray],
                  threshold: float) -> str:
  """Each IBP layer's utilities, sorted, against the pruning threshold.

  Args:
    path: PNG file to write.
    values: from `utilities` (non-empty): per layer the utilities of its
      blocks.
    threshold: utilities at or under it are pruned at test time.

  Returns:
    `path`; the image is `SIZES['ibp_utilities']` pixels.
  """
  fig = _figure('ibp_utilities')
  ax = fig.subplots()
  for name, value in values.items():
    ordered = np.sort(value)[::-1]
    pruned = float(np.mean(value <= threshold))
    ax.plot(np.linspace(0.0, 1.0, len(ordered)), np.maximum(ordered, 1e-4),
            label=f'{name} ({100 * pruned:.1f}% pruned, {len(value)})')
  ax.axhline(threshold, color='k', linestyle='--', linewidth=1,
             label=f'threshold {threshold:g}')
  ax.set_yscale('log')
  ax.set_xlabel('rank of the utility (share of the layer)')
  ax.set_ylabel('utility sigmoid(t)')
  ax.set_title('IBP utilities: blocks at or under the threshold are pruned')
  ax.legend(fontsize=8)
  return _save(fig, path)


def certified_curve(result: Mapping[str, object]):
  """Certified accuracy as a step function of the L2 radius.

  Args:
    result: from `certify.certify_dataset` (or its certify.json).

  Returns:
    (radii float `[m + 1]`: 0 then the sorted certified radii of the m
    images certified correct; accuracy float `[m + 1]` in [0, 1]: the share
    of all images certified correct at a radius > radii[i], so at
    radii[i] itself it is accuracy[i - 1], as the table counts radius >= r).
  """
  rows = result['per_example']
  radii = np.sort([r['radius'] for r in rows if r['certify'] == r['label']])
  m, n = len(radii), max(len(rows), 1)
  return (np.concatenate([[0.0], radii]),
          np.concatenate([[m], m - 1 - np.arange(m)]) / n)


def certified_accuracy(path: str, result: Mapping[str, object]) -> str:
  """Randomized smoothing: certified accuracy against the L2 radius.

  A step curve of the share of images certified correct at radius >= r
  (`certified_curve`), with the table's radii as points.

  Args:
    path: PNG file to write.
    result: from `certify.certify_dataset` (or its certify.json).

  Returns:
    `path`; the image is `SIZES['certified_accuracy']` pixels.
  """
  radii, accuracy = certified_curve(result)
  table = {float(k): v for k, v in result['certified_accuracy'].items()}
  right = max([*radii, *table, 0.1]) * 1.1
  xs, ys = np.append(radii, right), np.append(accuracy, accuracy[-1])
  fig = _figure('certified_accuracy')
  ax = fig.subplots()
  # Drawn 'post': the value drops just after each radius.
  ax.step(xs, ys, where='post', color='#0969da', label='every image')
  ax.plot(list(table), list(table.values()), 'o', color='#cf222e',
          label='table radii')
  for radius, value in table.items():
    ax.annotate(f'{100 * value:.1f}%', (radius, value), fontsize=8,
                textcoords='offset points', xytext=(4, 4))
  settings = result['settings']
  ax.set_title(f'Randomized smoothing, sigma {settings["sigma"]:g}, '
               f'n {settings["n"]}, alpha {settings["alpha"]:g}, '
               f'{result["examples"]} images', fontsize=10)
  ax.set_xlabel('L2 radius')
  ax.set_ylabel('certified accuracy')
  ax.set_xlim(0.0, right)
  ax.set_ylim(0.0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def learning_curves(path: str, records: Sequence[Mapping[str, float]]) -> str:
  """Loss, accuracy and KL per epoch, from metrics.jsonl's records.

  The KL panel shows 'train/kl', the unscaled sum of the stochastic layers'
  KL terms (`model.losses`) per step, and 'train/kl_term', the KL as weighted
  in the objective (annealing x 1 / training examples), on its own axis.
  Without stochastic layers (no such records, or all zero) the panel says so.

  Args:
    path: PNG file to write.
    records: one dict per epoch with 'epoch', 'train/loss', 'test/loss',
      'train/accuracy', 'test/accuracy' and optionally the KL keys.

  Returns:
    `path`; the image is `SIZES['learning_curves']` pixels.
  """
  fig = _figure('learning_curves')
  fig.suptitle('Learning curves', fontsize=11)
  loss_ax, accuracy_ax, kl_ax = fig.subplots(1, 3)

  def curve(ax, key, label, **kwargs):
    points = [(r['epoch'], r[key]) for r in records if key in r]
    if points:
      ax.plot(*zip(*points), marker='o', label=label, **kwargs)

  for ax, what in ((loss_ax, 'loss'), (accuracy_ax, 'accuracy')):
    curve(ax, f'train/{what}', 'train')
    curve(ax, f'test/{what}', 'test')
    ax.set_title(what if what == 'accuracy' else 'loss (objective in train, '
                 'cross-entropy in test)', fontsize=9)
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  if any(r.get('train/kl') for r in records):
    curve(kl_ax, 'train/kl', 'KL, unscaled (sum of model.losses)',
          color='#8250df')
    kl_ax.set_ylabel('unscaled KL', fontsize=8)
    term_ax = kl_ax.twinx()
    curve(term_ax, 'train/kl_term', 'KL term in the objective',
          color='#bc4c00', linestyle='--')
    term_ax.set_ylabel('weighted KL in the objective', fontsize=8)
    kl_ax.set_title('KL of the stochastic layers (train)', fontsize=9)
    kl_ax.set_xlabel('epoch')
    kl_ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    handles, labels = (sum(pair, []) for pair in zip(
        kl_ax.get_legend_handles_labels(), term_ax.get_legend_handles_labels()))
    kl_ax.legend(handles, labels, fontsize=8)
  else:
    kl_ax.set_axis_off()
    kl_ax.text(0.5, 0.5, 'No KL term: the model has no\nstochastic LWTA or '
               'IBP layers.', ha='center', va='center', fontsize=10,
               transform=kl_ax.transAxes)
  return _save(fig, path)


def robustness_figures(figures_dir: str, examples,
                       settings: Mapping[str, str],
                       class_names: Sequence[str]) -> List[str]:
  """Every figure of one evaluation's `robustness.Examples`.

  Args:
    figures_dir: folder to write into.
    examples: a filled `robustness.Examples`.
    settings: {attack name: its settings string} (the table's column).
    class_names: K names.

  Returns:
    Paths written: attack_<name>.png per attack and for 'combined',
    true_class_histograms.png, correct_and_fooled.png.
  """
  paths = []
  if examples.labels is not None and len(examples.labels):
    for name, adversarial in examples.adversarial.items():
      paths.append(attack_grid(
          os.path.join(figures_dir, f'attack_{name}.png'), name,
          settings.get(name, ''), examples.images, adversarial,
          examples.labels, examples.probabilities['natural'],
          examples.probabilities[name], class_names))
  paths.append(true_class_histograms(
      os.path.join(figures_dir, 'true_class_histograms.png'),
      examples.true_class))
  if examples.labels is not None and len(examples.labels):
    paths.append(correct_and_fooled(
        os.path.join(figures_dir, 'correct_and_fooled.png'), examples,
        class_names))
  return paths


def model_figures(figures_dir: str, model: keras.Model,
                  images: np.ndarray) -> List[str]:
  """LWTA winner shares and IBP utilities, for models that have them.

  Args:
    figures_dir: folder to write into.
    model: the trained model.
    images: float32 `[B, H, W, C]` in [0, 1], test images for the winners.

  Returns:
    Paths written (lwta_winner_shares.png, ibp_utilities.png), possibly none.
  """
  paths = []
  shares = winner_shares(model, images)
  if shares:
    paths.append(lwta_winner_shares(
        os.path.join(figures_dir, 'lwta_winner_shares.png'), shares))
  values = utilities(model)
  if values:
    paths.append(ibp_utilities(os.path.join(figures_dir, 'ibp_utilities.png'),
                               values, ibp_lib.ibp_layers(model)[0].threshold))
  return paths

"""Stochastic LWTA against its ReLU twin, and an ablation, at one budget.

Trains a recipe (a flagfile) and its twin (the same flagfile with
`--activation=relu --noibp`: same network, data, adversarial training and
budget), then scores both with `strongest_evaluation`, the one function to
swap for a stronger audit:

  * PGD L-inf with many steps and random restarts; for a stochastic model
    twice, with the gradient of the adaptive surrogate
    (`surrogate.surrogate_logits_fn(logits_fn, 'expected')`: each LWTA unit
    times its winning probability, deterministic) and with plain EOT
    (the gradient averaged over `eot_samples` sampled passes);
  * decisions (clean and attacked) are the argmax of the softmax averaged
    over `mc_samples` passes; an image counts as robust only if its clean
    decision and its decision under every attack are right (per-image
    worst case);
  * every accuracy comes with the image count and its binomial standard
    error sqrt(p (1 - p) / n); the decision's own Monte Carlo noise is
    reported as the share of images whose clean decision changes between
    two independent scorings.

    python benchmarks/lwta_vs_relu.py                       # the recipe
    python benchmarks/lwta_vs_relu.py --part=ablation       # the ablation
    python benchmarks/lwta_vs_relu.py --write=false         # print only

Runs go to --runs_dir (finished runs are reused: delete a folder to retrain
it); the tables to BENCHMARKS.md.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Dict, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

from tf_slwta import attacks
from tf_slwta import cli
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.layers import ibp
from tf_slwta.layers import lwta
from tf_slwta.layers import surrogate
from tf_slwta.training import distribute
from tf_slwta.training import loop
from tf_slwta.training import state
from tf_slwta.training import steps

_PART = flags.DEFINE_enum('part', 'recipe', ['recipe', 'ablation'],
                          'recipe: LWTA vs ReLU twin; ablation: the variants.')
_RECIPE = flags.DEFINE_string('recipe', 'flags/slwta_fashion_mnist.cfg',
                              'Flagfile of the LWTA recipe.')
_ABLATION = flags.DEFINE_string('ablation_flagfile',
                                'flags/slwta_ablation.cfg',
                                'Flagfile of the ablation\'s base run.')
_RUNS = flags.DEFINE_string('runs_dir', 'runs/lwta_vs_relu',
                            'Where the runs are trained (and reused).')
_EXAMPLES = flags.DEFINE_integer('examples', 1000, 'Test images scored.')
_EPS = flags.DEFINE_float('eps', 0.1, 'L-inf budget of the evaluation.')
_STEPS = flags.DEFINE_integer('steps', 50, 'PGD steps.')
_RESTARTS = flags.DEFINE_integer('restarts', 3, 'PGD random restarts.')
_EOT = flags.DEFINE_integer('eot_samples', 10, 'EOT passes per gradient.')
_MC = flags.DEFINE_integer('mc_samples', 10, 'Passes per decision.')
_BATCH = flags.DEFINE_integer('batch_size', 250, 'Images per attack batch.')
_WRITE = flags.DEFINE_bool('write', True, 'Update BENCHMARKS.md.')

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'BENCHMARKS.md')

# The ablation: (row name, flag overrides of the ablation flagfile).
ABLATION = (
    ('LWTA (base: U=2, T=0.67, lwta_kl_weight=1e-3, expected-winner attack, '
     'no IBP)', {}),
    ('temperature 0.3', {'lwta_temperature': 0.3}),
    ('temperature 1.5', {'lwta_temperature': 1.5}),
    ('U=4', {'lwta_competitors': 4}),
    ('lwta_kl_weight=0', {'lwta_kl_weight': 0.0}),
    ('lwta_kl_weight=1e-2', {'lwta_kl_weight': 1e-2}),
    ('lwta_kl_weight=1 (the ELBO)', {'lwta_kl_weight': 1.0}),
    ('lwta_kl_weight=1/N (the references)', {'lwta_kl_weight': 'one_over_n'}),
    ('+ IBP (Adam 0.01, KL weight 1)', {'ibp': True}),
    ('ReLU twin', {'activation': 'relu'}),
    ('lwta_kl_weight=1e-4 (the default)', {'lwta_kl_weight': 1e-4}),
    ('+ IBP at its defaults (Adam 0.1, KL weight 30)',
     {'ibp': True, 'ibp_learning_rate': 0.1, 'ibp_kl_weight': 30.0}),
    ('the defaults: T=0.67, lwta_kl_weight=1e-4, training-temperature attack',
     {'lwta_kl_weight': 1e-4, 'mixture_gradient': 'training_temperature'}),
)


def is_stochastic(model) -> bool:
  """Whether the model samples at test time (LWTA winners)."""
  return any(not l.deterministic for l in lwta.lwta_layers(model))


def strongest_evaluation(model, images: np.ndarray, labels: np.ndarray, *,
                         eps: float, steps: int, restarts: int,
                         eot_samples: int, mc_samples: int,
                         batch_size: int = 250, seed: int = 0
                         ) -> Dict[str, object]:
  """Clean and worst-case robust accuracy under the strongest attacks here.

  Args:
    model: a Keras model mapping images in [0, 1] to logits.
    images: uint8 `[N, H, W, C]`; labels: int `[N]`.
    eps: L-inf budget; PGD steps of 2.5 eps / steps, random starts.
    steps, restarts: PGD iterations and restarts (worst restart kept).
    eot_samples: sampled passes per gradient for the plain EOT attack.
    mc_samples: passes per decision.
    batch_size: images per attack batch.
    seed: seed of the random starts.

  Returns:
    {'images': N, 'clean', 'worst_case' and one entry per attack: accuracy
    in [0, 1]; 'se': {name: binomial standard error}; 'decision_flips':
    share of images whose clean decision differs between two independent
    scorings; 'attacks': {name: description}; 'seconds'}.
  """
  served = lambda x: model(x, training=False)
  stochastic = is_stochastic(model)
  passes = mc_samples if stochastic else 1
  alpha = 2.5 * eps / steps
  common = dict(eps=eps, alpha=alpha, steps=steps, restarts=restarts,
                mc_samples=passes)
  if stochastic:
    runs = {
        'pgd_expected': (surrogate.surrogate_logits_fn(served, 'expected'),
                         dict(eot_samples=1)),
        'pgd_eot': (served, dict(eot_samples=eot_samples)),
    }
  else:
    runs = {'pgd': (served, dict(eot_samples=1))}
  descriptions = {
      name: (f'PGD Linf eps={eps:g}, alpha={alpha:g}, {steps} steps, '
             f'{restarts} restarts, gradient: '
             + {'pgd_expected': 'expected winners (adaptive)',
                'pgd_eot': f'EOT over {eot_samples} sampled passes',
                'pgd': 'the model'}[name])
      for name in runs}
  start = time.perf_counter()
  ok = {name: [] for name in ('clean', 'clean_again', *runs)}
  for index, (x, y) in enumerate(data_lib.as_batches(images, labels,
                                                     batch_size)):
    decide = lambda v: (attacks.predict(served, v, passes) == y).numpy()
    ok['clean'].append(decide(x))
    ok['clean_again'].append(decide(x))
    for name, (fn, options) in runs.items():
      adv = attacks.pgd(fn, x, y, norm='inf', seed=seed * 7919 + index,
                        **common, **options)
      ok[name].append(decide(adv))
    print(f'evaluation: batch {index + 1} ({time.perf_counter() - start:.0f}'
          f' s)', flush=True)
  ok = {name: np.concatenate(v) for name, v in ok.items()}
  worst = ok['clean'].copy()
  for name in runs:
    worst &= ok[name]
  n = len(worst)
  result = {'images': n, 'clean': float(ok['clean'].mean()),
            'worst_case': float(worst.mean())}
  for name in runs:
    result[name] = float((ok['clean'] & ok[name]).mean())
  result['se'] = {k: float(np.sqrt(result[k] * (1 - result[k]) / n))
                  for k in ('clean', 'worst_case', *runs)}
  result['decision_flips'] = float(np.mean(ok['clean'] != ok['clean_again']))
  result['attacks'] = descriptions
  result['seconds'] = time.perf_counter() - start
  return result


def train_run(config: config_lib.ExperimentConfig) -> Dict[str, object]:
  """Trains (or reuses) one run; returns its last metrics and the model."""
  strategy = distribute.make_strategy('one_device')
  results = os.path.join(config.output_dir, run_folder.RESULTS_FILE)
  start = time.perf_counter()
  if not os.path.exists(results):
    from tf_slwta.defenses import mixture  # pylint: disable=g-import-not-at-top
    perturb = (mixture.AttackMixture(config.train.mixture, config.attack,
                                     config.train.noise_sigma, strategy,
                                     gradient=config.train.mixture_gradient)
               if config.train.mixture else steps.identity_perturbation)
    loop.train(config, strategy, perturb=perturb)
  with open(results) as f:
    record = json.load(f)
  model = state.restore_model(config, strategy)
  return {'record': record, 'model': model,
          'train_seconds': time.perf_counter() - start}


def _with(config: config_lib.ExperimentConfig, output_dir: str,
          **changes) -> config_lib.ExperimentConfig:
  """`config` with model/train field changes and another output_dir."""
  model_fields = {f.name for f in dataclasses.fields(config_lib.ModelConfig)}
  model = {k: v for k, v in changes.items() if k in model_fields}
  train = {k: v for k, v in changes.items() if k not in model_fields}
  return dataclasses.replace(
      config, output_dir=output_dir, mode='train',
      model=dataclasses.replace(config.model, **model),
      train=dataclasses.replace(config.train, **train))


def _evaluate(run, images, labels):
  return strongest_evaluation(
      run['model'], images, labels, eps=_EPS.value, steps=_STEPS.value,
      restarts=_RESTARTS.value, eot_samples=_EOT.value, mc_samples=_MC.value,
      batch_size=_BATCH.value)


def _pct(result, key):
  if key not in result:
    return '-'
  return f'{100 * result[key]:.1f} ± {100 * result["se"][key]:.1f}'


def _table(rows: Sequence[tuple], title: str, config) -> str:
  """Markdown: one line per (name, flags, run, result)."""
  first = rows[0][3]
  lines = [title, '',
           f'Scored on the first {first["images"]} Fashion-MNIST test images'
           f' (± one binomial standard error); decisions averaged over '
           f'{_MC.value} passes; robust = right on the clean image and '
           f'under every attack (per-image worst case). Attacks: PGD L-inf '
           f'eps={_EPS.value:g}, {_STEPS.value} steps of '
           f'{2.5 * _EPS.value / _STEPS.value:g}, {_RESTARTS.value} '
           f'restarts; for LWTA once through the expected winners '
           f'(adaptive) and once with EOT over {_EOT.value} sampled passes.',
           '', '| model | clean (%) | PGD, expected winners (%) | '
           'PGD, EOT (%) | PGD (%) | worst case (%) | decision flips (%) | '
           'IBP pruned (%) | train s |',
           '|---|---|---|---|---|---|---|---|---|']
  for name, _, run, result in rows:
    pruned = ibp.pruned_fractions(run['model']).get('all')
    lines.append(
        f'| {name} | {_pct(result, "clean")} | '
        f'{_pct(result, "pgd_expected")} | {_pct(result, "pgd_eot")} | '
        f'{_pct(result, "pgd")} | {_pct(result, "worst_case")} | '
        f'{100 * result["decision_flips"]:.1f} | '
        f'{"-" if pruned is None else f"{100 * pruned:.1f}"} | '
        f'{run["record"].get("train/epoch_seconds", 0) * config.train.epochs:.0f} |')
  return '\n'.join(lines)


def _write(marker: str, heading: str, text: str) -> None:
  start, end = f'<!-- {marker}:start -->', f'<!-- {marker}:end -->'
  current = open(BENCHMARKS).read()
  if start not in current:
    current += f'\n## {heading}\n\n{start}\n{end}\n'
  head, rest = current.split(start, 1)
  tail = rest.split(end, 1)[1]
  with open(BENCHMARKS, 'w') as f:
    f.write(f'{head}{start}\n{text}\n{end}{tail}')


def main(argv):
  del argv
  tf.get_logger().setLevel('ERROR')
  flagfile = _RECIPE.value if _PART.value == 'recipe' else _ABLATION.value
  base = cli.parse_flagfiles([flagfile])
  n_train = base.data.train_examples or 60000
  stem = os.path.splitext(os.path.basename(flagfile))[0]
  if _PART.value == 'recipe':
    variants = (('LWTA' + (' + IBP' if base.model.ibp else ''), {}),
                ('ReLU twin', {'activation': 'relu', 'ibp': False}))
    if base.model.ibp:
      variants += (('LWTA without IBP', {'ibp': False}),)
  else:
    variants = ABLATION
  images, labels = data_lib.load_arrays(
      dataclasses.replace(base.data, eval_examples=_EXAMPLES.value), 'test')
  rows = []
  for index, (name, changes) in enumerate(variants):
    changes = {k: (1.0 / n_train if v == 'one_over_n' else v)
               for k, v in changes.items()}
    folder = os.path.join(_RUNS.value, stem, f'{index}')
    config = _with(base, folder, **changes)
    print(f'\n=== {name}: {folder} ===', flush=True)
    run = train_run(config)
    saved = os.path.join(folder, 'strongest_evaluation.json')
    settings = dict(eps=_EPS.value, steps=_STEPS.value,
                    restarts=_RESTARTS.value, eot=_EOT.value, mc=_MC.value,
                    examples=_EXAMPLES.value)
    result = None
    if os.path.exists(saved):
      with open(saved) as f:
        kept = json.load(f)
      result = kept['result'] if kept['settings'] == settings else None
    if result is None:
      result = _evaluate(run, images, labels)
      with open(saved, 'w') as f:
        json.dump({'settings': settings, 'result': result}, f, indent=2)
    print(json.dumps(result), flush=True)
    rows.append((name, changes, run, result))
  command = ('python benchmarks/lwta_vs_relu.py' +
             (f' --recipe={flagfile}' if _PART.value == 'recipe'
              else ' --part=ablation'))
  title = (f'Command: `{command}` (flagfile {flagfile}: '
           f'{base.model.name}'
           f'{f"-{base.model.depth}-{base.model.widen_factor}" if base.model.name == "wide_resnet" else ""}, '
           f'{n_train} training images, {base.train.epochs} epochs, '
           f'mixture {",".join(f"{b}:{w:g}" for b, w in base.train.mixture) or "clean"}'
           f' at eps {base.attack.pgd_eps:g}; runs in {_RUNS.value}/{stem}/).')
  text = _table(rows, title, base)
  print(text)
  if _WRITE.value:
    _write(f'lwta_vs_relu_{stem}' if _PART.value == 'recipe'
           else 'lwta_ablation',
           f'Stochastic LWTA against its ReLU twin ({stem})'
           if _PART.value == 'recipe' else 'Stochastic LWTA: ablation', text)


if __name__ == '__main__':
  app.run(main)

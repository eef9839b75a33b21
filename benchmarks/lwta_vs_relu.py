"""Stochastic LWTA against its ReLU twin, and an ablation, at one budget.

Trains a recipe (a flagfile) and its twin (the same flagfile with
`--activation=relu --noibp`: same network, data, adversarial training and
budget), then scores every run with the project's strongest evaluation,
the gradient-masking audit (`evaluation.audit.run_audit`, settings from
--audit_flagfile, flags/attacks/audit_cpu.cfg by default): APGD-CE and
APGD-DLR in every gradient mode of the stochastic layers, Square, FGSM,
random noise and a transfer attack (the LWTA runs from the twin, the twin
from the first LWTA run); each image robust only if it survives all of
them, scored by fresh repeated decisions of `--mc_samples` passes. Every
number comes with its Monte Carlo and image standard errors and the
audit's failed checks.

    python benchmarks/lwta_vs_relu.py                       # the recipe
    python benchmarks/lwta_vs_relu.py --part=ablation       # the ablation
    python benchmarks/lwta_vs_relu.py --write=false         # print only

Runs go to --runs_dir (finished runs are reused: delete a folder to retrain
it; a finished audit with the same settings is reused too); the tables to
BENCHMARKS.md.
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

from tf_slwta import cli
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.evaluation import audit
from tf_slwta.layers import ibp
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
_AUDIT = flags.DEFINE_string('audit_flagfile', 'flags/attacks/audit_cpu.cfg',
                             'Flagfile of the audit\'s attacks and checks.')
_EXAMPLES = flags.DEFINE_integer('examples', 500, 'Test images scored.')
_EPS = flags.DEFINE_float('eps', 0.0314, 'L-inf budget of the evaluation.')
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


def audit_settings() -> tuple:
  """(AttackConfig, AuditConfig) of --audit_flagfile at --eps / --mc_samples."""
  parsed = cli.parse_flagfiles([_AUDIT.value])
  return (dataclasses.replace(parsed.attack, aa_eps=_EPS.value,
                              mc_samples=_MC.value), parsed.audit)


def strongest_evaluation(model, images: np.ndarray, labels: np.ndarray,
                         transfer_model=None, transfer_from: str = ''
                         ) -> Dict[str, object]:
  """The audit of `model`, summed up for the table.

  Args:
    model: a Keras model mapping images in [0, 1] to logits.
    images: uint8 `[N, H, W, C]`; labels: int `[N]`.
    transfer_model: source model of the transfer attack, or None;
      transfer_from: its run folder (named in the table's settings).

  Returns:
    {'images': N, 'clean', 'worst_case': accuracy in [0, 1], 'se': {name:
    (Monte Carlo s.e., image s.e.)}, 'failed': names of failed checks,
    'seconds'}.
  """
  attack, audit_cfg = audit_settings()
  if transfer_model is not None:
    attack = dataclasses.replace(attack, transfer_from=transfer_from)
  served = lambda x: model(x, training=False)
  start = time.perf_counter()
  result = audit.run_audit(
      served, images, labels, attack, audit_cfg, batch_size=_BATCH.value,
      transfer_logits_fn=(None if transfer_model is None else
                          lambda x: transfer_model(x, training=False)))
  rows = {row['attack']: row for row in result['rows']}
  picked = {'clean': rows['natural'], 'worst_case': rows['combined']}
  return {'images': len(images),
          **{k: row['accuracy'] for k, row in picked.items()},
          'se': {k: (row['mc_se'], row['image_se'])
                 for k, row in picked.items()},
          'failed': list(result['failed']),
          'seconds': time.perf_counter() - start}


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


def _pct(result, key):
  mc, image = result['se'][key]
  return f'{100 * result[key]:.1f} ± {100 * mc:.1f} ± {100 * image:.1f}'


def _table(rows: Sequence[tuple], title: str, config) -> str:
  """Markdown: one line per (name, flags, run, result)."""
  attack, _ = audit_settings()
  lines = [title, '',
           f'Scored by the audit ({_AUDIT.value}, eps {_EPS.value:g}, '
           f'{",".join(attack.attacks)} in every gradient mode, FGSM, random '
           f'noise, transfer) on the first {rows[0][3]["images"]} test '
           f'images; decisions averaged over {_MC.value} passes, each image '
           f'scored by {attack.decision_repeats} fresh decisions; robust = '
           f'right under every attack (per-image worst case). Accuracy (%) ± '
           f'Monte Carlo s.e. ± image s.e.', '',
           '| model | clean (%) | worst case (%) | failed checks | '
           'IBP pruned (%) | train s |',
           '|---|---|---|---|---|---|']
  for name, _, run, result in rows:
    pruned = ibp.pruned_fractions(run['model']).get('all')
    lines.append(
        f'| {name} | {_pct(result, "clean")} | '
        f'{_pct(result, "worst_case")} | '
        f'{", ".join(result["failed"]) or "none"} | '
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
  runs = []
  for index, (name, changes) in enumerate(variants):
    changes = {k: (1.0 / n_train if v == 'one_over_n' else v)
               for k, v in changes.items()}
    folder = os.path.join(_RUNS.value, stem, f'{index}')
    print(f'\n=== {name}: {folder} ===', flush=True)
    runs.append((name, changes, folder,
                 train_run(_with(base, folder, **changes))))
  # The transfer attack: LWTA runs from the twin, the twin from the first.
  twin = next((folder, run['model']) for _, changes, folder, run in runs
              if changes.get('activation') == 'relu')
  attack, audit_cfg = audit_settings()
  settings = {'attack': dataclasses.asdict(attack),
              'audit': dataclasses.asdict(audit_cfg),
              'examples': _EXAMPLES.value}
  rows = []
  for name, changes, folder, run in runs:
    saved = os.path.join(folder, 'strongest_evaluation.json')
    result = None
    if os.path.exists(saved):
      with open(saved) as f:
        kept = json.load(f)
      result = kept['result'] if kept['settings'] == settings else None
    if result is None:
      source = (runs[0][2], runs[0][3]['model']) if folder == twin[0] else twin
      result = strongest_evaluation(run['model'], images, labels, source[1],
                                    source[0])
      with open(saved, 'w') as f:
        json.dump({'settings': settings, 'result': result}, f, indent=2)
    print(name, json.dumps(result), flush=True)
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

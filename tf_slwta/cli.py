"""Command line: absl flag definitions, validation, and the run dispatcher.

This is the only module that reads absl flags. `define_flags` declares them
(on any `FlagValues`, so tests can parse flagfiles in isolation), validators
refuse bad values while the command line is parsed, before any work, and
`config_from_flags` turns them once into the frozen `ExperimentConfig` that
the library takes.
"""

import dataclasses
import glob
import json
import os
import sys
from typing import List, Sequence

from absl import flags
from absl import logging

from tf_slwta import config as config_lib

_SECTIONS = {
    'data': ('dataset', 'data_dir', 'tfds_data_dir', 'train_examples',
             'eval_examples', 'batch_size', 'eval_batch_size', 'augment',
             'download'),
    'model': ('model', 'activation', 'depth', 'widen_factor',
              'seed_cnn_filters', 'seed_cnn_units', 'pni', 'pni_alpha_init',
              'pni_channelwise', 'pni_at_test', 'lwta_competitors',
              'lwta_temperature', 'lwta_test_temperature',
              'lwta_deterministic', 'ibp', 'ibp_threshold',
              'seed_cnn_batch_norm'),
    'attack': ('attacks', 'combined', 'fgsm_eps', 'pgd_eps', 'pgd_alpha',
               'pgd_steps', 'pgd_l2_eps', 'pgd_l2_alpha', 'pgd_restarts',
               'pgd_random_start', 'cw_c', 'cw_kappa', 'cw_steps',
               'cw_binary_search_steps', 'cw_learning_rate', 'eot_samples',
               'mc_samples', 'attack_seed'),
    'train': ('epochs', 'kl_anneal_epochs', 'learning_rate', 'momentum', 'nesterov',
              'weight_decay', 'lr_schedule', 'lr_warmup_epochs',
              'lr_decay_epochs', 'lr_decay_ratio', 'label_smoothing', 'seed',
              'strategy', 'checkpoint_every_steps', 'keep_checkpoints',
              'log_every_steps', 'mixture', 'noise_sigma',
              'clean_loss_weight', 'lwta_kl_weight', 'ibp_kl_weight',
              'ibp_learning_rate', 'mixture_gradient'),
    'certify': ('certify_sigma', 'certify_n0', 'certify_n', 'certify_alpha',
                'certify_batch_size', 'certify_radii'),
    'export': ('export_dir', 'export_name', 'export_version',
               'export_sampling'),
    'serve': ('server', 'serving_protocol', 'serving_timeout', 'images',
              'serving_batch_size', 'export_name', 'export_version'),
}


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """Declares every tf_slwta flag and its validators on `fv`."""
  d_data, d_model, d_train = (config_lib.DataConfig(), config_lib.ModelConfig(),
                              config_lib.TrainConfig())
  # Run.
  flags.DEFINE_enum('mode', 'train', config_lib.MODES,
                    'train: train (or resume) and evaluate every epoch; '
                    'evaluate: score the latest checkpoint in --output_dir; '
                    'certify: randomized smoothing; grid: many flagfiles; '
                    'export: write the latest checkpoint as a SavedModel '
                    'for TF Serving; predict: classify through a running '
                    'TF Serving.',
                    flag_values=fv)
  flags.DEFINE_string('output_dir', 'runs/quickstart',
                      'Checkpoints, TensorBoard logs, metrics.jsonl, results.',
                      flag_values=fv)
  # Data.
  flags.DEFINE_enum('dataset', d_data.dataset, config_lib.DATASETS,
                    'Data set.', flag_values=fv)
  flags.DEFINE_string('data_dir', None,
                      'Folder with the four Fashion-MNIST IDX .gz files; '
                      'searched before /usr/share/datasets/fashion-mnist.',
                      flag_values=fv)
  flags.DEFINE_string('tfds_data_dir', None,
                      'tensorflow-datasets folder for mnist and cifar10.',
                      flag_values=fv)
  flags.DEFINE_integer('train_examples', d_data.train_examples,
                       'Use the first N training examples (0: all).',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('eval_examples', d_data.eval_examples,
                       'Use the first N test examples (0: all).',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('batch_size', d_data.batch_size,
                       'Global training batch over all replicas.',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('eval_batch_size', d_data.eval_batch_size,
                       'Global evaluation batch over all replicas.',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_enum('augment', 'auto', ['auto', 'true', 'false'],
                    'Pad-crop and flip training images (auto: on for '
                    'cifar10 only).', flag_values=fv)
  flags.DEFINE_bool('download', d_data.download,
                    'Allow downloading a data set that is not found locally.',
                    flag_values=fv)
  # Model.
  flags.DEFINE_enum('model', d_model.name, config_lib.MODELS, 'Network.',
                    flag_values=fv)
  flags.DEFINE_enum('activation', d_model.activation, config_lib.ACTIVATIONS,
                    'Activation after every linear map.', flag_values=fv)
  flags.DEFINE_integer('depth', d_model.depth, 'WideResNet depth (6n + 4).',
                       flag_values=fv)
  flags.DEFINE_integer('widen_factor', d_model.widen_factor,
                       'WideResNet width multiplier.', lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_list('seed_cnn_filters',
                    [str(f) for f in d_model.seed_cnn_filters],
                    'Channels of the seed CNN convolutions.', flag_values=fv)
  flags.DEFINE_integer('seed_cnn_units', d_model.seed_cnn_units,
                       'Units of the seed CNN dense layer.', lower_bound=1,
                       flag_values=fv)
  # Training.
  flags.DEFINE_integer('epochs', d_train.epochs, 'Training epochs.',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_float('learning_rate', d_train.learning_rate,
                     'Peak SGD learning rate.', flag_values=fv)
  flags.DEFINE_float('momentum', d_train.momentum, 'SGD momentum.',
                     flag_values=fv)
  flags.DEFINE_bool('nesterov', d_train.nesterov, 'Nesterov momentum.',
                    flag_values=fv)
  flags.DEFINE_float('weight_decay', d_train.weight_decay,
                     'Decoupled weight decay of SGD.', lower_bound=0.0,
                     flag_values=fv)
  flags.DEFINE_enum('lr_schedule', d_train.lr_schedule,
                    config_lib.LR_SCHEDULES, 'Learning-rate schedule.',
                    flag_values=fv)
  flags.DEFINE_float('lr_warmup_epochs', d_train.lr_warmup_epochs,
                     'Linear warm-up epochs.', lower_bound=0.0, flag_values=fv)
  flags.DEFINE_list('lr_decay_epochs', [],
                    "Epochs where the 'step' schedule decays.", flag_values=fv)
  flags.DEFINE_float('lr_decay_ratio', d_train.lr_decay_ratio,
                     "Decay factor of the 'step' schedule.", flag_values=fv)
  flags.DEFINE_float('label_smoothing', d_train.label_smoothing,
                     'Label smoothing of the cross-entropy, in [0, 1).',
                     flag_values=fv)
  flags.DEFINE_integer('seed', d_train.seed,
                       'Seed of weights, shuffling and augmentation.',
                       flag_values=fv)
  flags.DEFINE_enum('strategy', d_train.strategy, config_lib.STRATEGIES,
                    'auto: MirroredStrategy over local GPUs (or the CPU), '
                    'MultiWorkerMirroredStrategy if TF_CONFIG names several '
                    'workers; mirrored; multi_worker (TF_CONFIG); one_device.',
                    flag_values=fv)
  flags.DEFINE_integer('checkpoint_every_steps',
                       d_train.checkpoint_every_steps,
                       'Also checkpoint every N steps (0: each epoch end).',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('keep_checkpoints', d_train.keep_checkpoints,
                       'Checkpoints to keep.', lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('log_every_steps', d_train.log_every_steps,
                       'Progress and TensorBoard interval in steps.',
                       lower_bound=1, flag_values=fv)

  # Stochastic LWTA and IBP.
  flags.DEFINE_integer('lwta_competitors', d_model.lwta_competitors,
                       'Units per LWTA block (--activation=lwta).',
                       flag_values=fv)
  flags.DEFINE_float('lwta_temperature', d_model.lwta_temperature,
                     'LWTA Gumbel-softmax temperature in training.',
                     flag_values=fv)
  flags.DEFINE_float('lwta_test_temperature', d_model.lwta_test_temperature,
                     'LWTA temperature at test (sampling stays on).',
                     flag_values=fv)
  flags.DEFINE_bool('lwta_deterministic', d_model.lwta_deterministic,
                    'Hard argmax LWTA winners instead of sampling.',
                    flag_values=fv)
  flags.DEFINE_bool('ibp', d_model.ibp,
                    'Indian Buffet Process priors (blocks of '
                    '--lwta_competitors) on seed_cnn\'s hidden layers or '
                    'wide_resnet\'s residual convolutions.', flag_values=fv)
  flags.DEFINE_float('ibp_threshold', d_model.ibp_threshold,
                     'IBP utilities at or under it prune their block at test.',
                     flag_values=fv)
  flags.DEFINE_float('kl_anneal_epochs', d_train.kl_anneal_epochs,
                     'Epochs over which the KL weight grows from 0 to 1.',
                     flag_values=fv)
  flags.DEFINE_float('lwta_kl_weight', d_train.lwta_kl_weight,
                     'Weight of the LWTA winners\' per-example KL in the '
                     'objective (1: the ELBO).', flag_values=fv)
  flags.DEFINE_float('ibp_kl_weight', d_train.ibp_kl_weight,
                     'Weight of the IBP KL / training-set size in the '
                     'objective (1: the ELBO).', flag_values=fv)
  flags.DEFINE_float('ibp_learning_rate', d_train.ibp_learning_rate,
                     'Peak learning rate of the IBP parameters\' own Adam '
                     '(no weight decay).', flag_values=fv)
  flags.DEFINE_enum('seed_cnn_batch_norm', 'auto', ['auto', 'true', 'false'],
                    'BatchNorm after seed_cnn\'s hidden linear maps (auto: '
                    'with --activation=lwta only).', flag_values=fv)

  # Defenses.
  flags.DEFINE_enum('pni', d_model.pni, config_lib.PNI_MODES,
                    'Parametric Noise Injection in seed_cnn: activation (the '
                    "seed's three places), weight (every kernel), both.",
                    flag_values=fv)
  flags.DEFINE_float('pni_alpha_init', d_model.pni_alpha_init,
                     'Initial PNI noise scale.', flag_values=fv)
  flags.DEFINE_bool('pni_channelwise', d_model.pni_channelwise,
                    'One PNI scale per channel instead of per layer.',
                    flag_values=fv)
  flags.DEFINE_bool('pni_at_test', d_model.pni_at_test,
                    'Keep PNI noise on at test time.', flag_values=fv)
  flags.DEFINE_list('mixture', [],
                    'Adversarial training: branch:weight entries over '
                    f'{",".join(config_lib.MIXTURE_BRANCHES)}, one branch '
                    "drawn per step; 'seed' is the seed's scheme "
                    '(noise:1,fgsm:1,pgd:1,cw:1,clean:4); empty: clean.',
                    flag_values=fv)
  flags.DEFINE_float('noise_sigma', d_train.noise_sigma,
                     'Std of the mixture\'s Gaussian-noise branch.',
                     flag_values=fv)
  flags.DEFINE_float('clean_loss_weight', d_train.clean_loss_weight,
                     'w of w * CE(clean) + (1 - w) * CE(perturbed).',
                     flag_values=fv)
  flags.DEFINE_enum('mixture_gradient', d_train.mixture_gradient,
                    config_lib.MIXTURE_GRADIENTS,
                    'How the mixture\'s attacks differentiate stochastic '
                    'layers: training_temperature (LWTA sampled at its '
                    'training temperature), sample (as served), expected or '
                    'straight_through (adaptive surrogates).',
                    flag_values=fv)
  d_certify = config_lib.CertifyConfig()
  flags.DEFINE_float('certify_sigma', d_certify.sigma,
                     'Randomized smoothing noise std (--mode=certify).',
                     flag_values=fv)
  flags.DEFINE_integer('certify_n0', d_certify.n0,
                       'CERTIFY samples that select the class.',
                       flag_values=fv)
  flags.DEFINE_integer('certify_n', d_certify.n,
                       'PREDICT / CERTIFY estimation samples.', flag_values=fv)
  flags.DEFINE_float('certify_alpha', d_certify.alpha,
                     'Failure probability of the certificate.', flag_values=fv)
  flags.DEFINE_integer('certify_batch_size', d_certify.batch_size,
                       'Noisy copies per forward pass.', flag_values=fv)
  flags.DEFINE_list('certify_radii', [str(r) for r in d_certify.radii],
                    'L2 radii of the certified-accuracy table.',
                    flag_values=fv)
  flags.DEFINE_list('grid', [],
                    'Flagfiles (or glob patterns) of the runs --mode=grid '
                    'trains and evaluates; default flags/seed_table/[0-9]*.cfg.',
                    flag_values=fv)
  flags.DEFINE_string('grid_overrides', None,
                      'Flagfile applied after each grid row (e.g. a budget).',
                      flag_values=fv)

  # Export to TF Serving, and prediction through it.
  d_export, d_serve = config_lib.ExportConfig(), config_lib.ServeConfig()
  flags.DEFINE_string('export_dir', d_export.export_dir,
                      '--mode=export writes <export_dir>/<name>/<version>/ '
                      'and <export_dir>/models.config.', flag_values=fv)
  flags.DEFINE_string('export_name', d_export.name,
                      'Served model name that --mode=export writes and '
                      '--mode=predict asks for (default: the last part of '
                      '--output_dir).', flag_values=fv)
  flags.DEFINE_integer('export_version', d_export.version,
                       'Version --mode=export writes (0: the next one; an '
                       'existing version is never overwritten) or '
                       '--mode=predict asks for (0: the latest).',
                       flag_values=fv)
  flags.DEFINE_enum('export_sampling', d_export.sampling,
                    config_lib.EXPORT_SAMPLING,
                    'How the export runs a stochastic model\'s --mc_samples '
                    'passes: auto (one example at a time only where noise is '
                    'shared across a batch, e.g. PNI), batched (faster; such '
                    'noise is then shared within a request), per_example.',
                    flag_values=fv)
  flags.DEFINE_string('server', d_serve.server,
                      'TF Serving address for --mode=predict: HOST:PORT '
                      '(8501 REST, 8500 gRPC by default).', flag_values=fv)
  flags.DEFINE_enum('serving_protocol', d_serve.protocol,
                    config_lib.SERVING_PROTOCOLS,
                    'rest (POST /v1/models/NAME:predict) or grpc '
                    '(PredictionService).', flag_values=fv)
  flags.DEFINE_float('serving_timeout', d_serve.timeout,
                     'Seconds to wait for each request.', flag_values=fv)
  flags.DEFINE_list('images', [],
                    'Image files --mode=predict classifies (empty: the test '
                    'split of --dataset).', flag_values=fv)
  flags.DEFINE_integer('serving_batch_size', d_serve.batch_size,
                       'Images per --mode=predict request.', flag_values=fv)

  # Attacks (robustness evaluation).
  d_attack = config_lib.AttackConfig()
  flags.DEFINE_bool('evaluate_robustness', False,
                    'After --mode=train, also attack the test examples and '
                    'write the robustness table.', flag_values=fv)
  flags.DEFINE_list('attacks', list(d_attack.attacks),
                    f'Attacks to run, in order: any of '
                    f'{",".join(config_lib.ATTACKS)} (empty: none).',
                    flag_values=fv)
  flags.DEFINE_enum('combined', d_attack.combined, config_lib.COMBINED_MODES,
                    'worst_case: robust only if every attack fails; '
                    "sequential: attacks chained as in the seed's figure.",
                    flag_values=fv)
  flags.DEFINE_float('fgsm_eps', d_attack.fgsm_eps, 'FGSM L-inf budget.',
                     flag_values=fv)
  flags.DEFINE_float('pgd_eps', d_attack.pgd_eps, 'PGD L-inf budget.',
                     flag_values=fv)
  flags.DEFINE_float('pgd_alpha', d_attack.pgd_alpha, 'PGD L-inf step.',
                     flag_values=fv)
  flags.DEFINE_integer('pgd_steps', d_attack.pgd_steps,
                       'PGD iterations (both norms).', flag_values=fv)
  flags.DEFINE_float('pgd_l2_eps', d_attack.pgd_l2_eps, 'PGD L2 budget.',
                     flag_values=fv)
  flags.DEFINE_float('pgd_l2_alpha', d_attack.pgd_l2_alpha, 'PGD L2 step.',
                     flag_values=fv)
  flags.DEFINE_integer('pgd_restarts', d_attack.pgd_restarts,
                       'PGD random restarts (worst case kept).',
                       flag_values=fv)
  flags.DEFINE_bool('pgd_random_start', d_attack.pgd_random_start,
                    'Start PGD at a random point of the ball.', flag_values=fv)
  flags.DEFINE_float('cw_c', d_attack.cw_c, 'Carlini-Wagner initial c.',
                     flag_values=fv)
  flags.DEFINE_float('cw_kappa', d_attack.cw_kappa,
                     'Carlini-Wagner confidence kappa.', flag_values=fv)
  flags.DEFINE_integer('cw_steps', d_attack.cw_steps,
                       'Carlini-Wagner Adam iterations per search step.',
                       flag_values=fv)
  flags.DEFINE_integer('cw_binary_search_steps',
                       d_attack.cw_binary_search_steps,
                       'Carlini-Wagner binary-search steps over c.',
                       flag_values=fv)
  flags.DEFINE_float('cw_learning_rate', d_attack.cw_learning_rate,
                     'Carlini-Wagner Adam step size.', flag_values=fv)
  flags.DEFINE_integer('eot_samples', d_attack.eot_samples,
                       'Passes averaged per attack gradient (EOT) for '
                       'stochastic models.', flag_values=fv)
  flags.DEFINE_integer('mc_samples', d_attack.mc_samples,
                       'Passes whose mean probabilities make the decision, '
                       'when attacking and when scoring.', flag_values=fv)
  flags.DEFINE_integer('attack_seed', d_attack.seed,
                       'Seed of the attacks\' random starts.', flag_values=fv)

  # Cross-field rules live in the dataclasses; run them while parsing so a
  # bad combination is refused before any work, naming the flag.
  for section, names in _SECTIONS.items():
    flags.register_multi_flags_validator(
        list(names), _section_checker(section), flag_values=fv)
  flags.register_validator(
      'strategy', _check_strategy,
      message='--strategy=multi_worker needs a valid TF_CONFIG.',
      flag_values=fv)


def _section_checker(section: str):
  builder = {'data': _data_config, 'model': _model_config,
             'train': _train_config, 'attack': _attack_config,
             'certify': _certify_config, 'export': _export_config,
             'serve': _serve_config}[section]

  def check(values):
    try:
      builder(values)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from e
    return True

  return check


def _check_strategy(value: str) -> bool:
  from tf_slwta.training import distribute  # pylint: disable=g-import-not-at-top
  if value == 'multi_worker':
    problem = distribute.tf_config_error()
    if problem:
      raise flags.ValidationError(f'--strategy=multi_worker: {problem}')
  return True


def _int_list(name: str, values: Sequence[str]) -> tuple:
  try:
    return tuple(int(v) for v in values)
  except ValueError as e:
    raise ValueError(f'--{name} takes comma-separated integers, got '
                     f'{",".join(values)}.') from e


def _data_config(v) -> config_lib.DataConfig:
  return config_lib.DataConfig(
      dataset=v['dataset'], data_dir=v['data_dir'],
      tfds_data_dir=v['tfds_data_dir'], train_examples=v['train_examples'],
      eval_examples=v['eval_examples'], batch_size=v['batch_size'],
      eval_batch_size=v['eval_batch_size'],
      augment={'auto': None, 'true': True, 'false': False}[v['augment']],
      download=v['download'])


def _model_config(v) -> config_lib.ModelConfig:
  special = ('model', 'seed_cnn_filters', 'seed_cnn_batch_norm')
  return config_lib.ModelConfig(
      name=v['model'],
      seed_cnn_filters=_int_list('seed_cnn_filters', v['seed_cnn_filters']),
      seed_cnn_batch_norm={'auto': None, 'true': True, 'false': False}[
          v['seed_cnn_batch_norm']],
      **{name: v[name] for name in _SECTIONS['model'] if name not in special})


def _mixture(entries: Sequence[str]) -> tuple:
  """'branch:weight' entries (or 'seed') -> ((branch, weight), ...)."""
  if list(entries) == ['seed']:
    return config_lib.SEED_MIXTURE
  parsed = []
  for entry in entries:
    name, _, weight = entry.partition(':')
    try:
      parsed.append((name, float(weight or 1.0)))
    except ValueError as e:
      raise ValueError(f'--mixture entry {entry!r} is not branch:weight.') from e
  return tuple(parsed)


def _train_config(v) -> config_lib.TrainConfig:
  special = ('lr_decay_epochs', 'mixture')
  return config_lib.TrainConfig(**{
      name: v[name] for name in _SECTIONS['train'] if name not in special
  }, lr_decay_epochs=_int_list('lr_decay_epochs', v['lr_decay_epochs']),
      mixture=_mixture(v['mixture']))


def _certify_config(v) -> config_lib.CertifyConfig:
  try:
    radii = tuple(float(r) for r in v['certify_radii'])
  except ValueError as e:
    raise ValueError('--certify_radii takes comma-separated numbers.') from e
  return config_lib.CertifyConfig(
      sigma=v['certify_sigma'], n0=v['certify_n0'], n=v['certify_n'],
      alpha=v['certify_alpha'], batch_size=v['certify_batch_size'],
      radii=radii)


def _export_config(v) -> config_lib.ExportConfig:
  return config_lib.ExportConfig(export_dir=v['export_dir'],
                                 name=v['export_name'],
                                 version=v['export_version'],
                                 sampling=v['export_sampling'])


def _serve_config(v) -> config_lib.ServeConfig:
  missing = [path for path in v['images'] if not os.path.isfile(path)]
  if missing:
    raise ValueError(f'--images names files that do not exist: '
                     f'{", ".join(missing)}.')
  return config_lib.ServeConfig(
      server=v['server'], protocol=v['serving_protocol'],
      model_name=v['export_name'], version=v['export_version'],
      timeout=v['serving_timeout'], images=tuple(v['images']),
      batch_size=v['serving_batch_size'])


def _attack_config(v) -> config_lib.AttackConfig:
  names = [n for n in _SECTIONS['attack'] if n not in ('attacks', 'attack_seed')]
  return config_lib.AttackConfig(
      attacks=tuple(v['attacks']), seed=v['attack_seed'],
      **{name: v[name] for name in names})


def config_from_flags(fv: flags.FlagValues = flags.FLAGS
                      ) -> config_lib.ExperimentConfig:
  """Builds the run's `ExperimentConfig` from parsed flags."""
  values = {name: fv[name].value for names in _SECTIONS.values()
            for name in names}
  return config_lib.ExperimentConfig(
      mode=fv.mode, output_dir=fv.output_dir,
      evaluate_robustness=fv.evaluate_robustness, data=_data_config(values),
      model=_model_config(values), train=_train_config(values),
      attack=_attack_config(values), certify=_certify_config(values),
      export=_export_config(values), serve=_serve_config(values),
      grid=tuple(fv.grid), grid_overrides=fv.grid_overrides)


def with_default_flagfile(argv: List[str], flagfile: str) -> List[str]:
  """Puts `--flagfile=flagfile` first unless `argv` names a flagfile.

  So `python main.py` runs the default job, and `python main.py --epochs=1`
  runs it with one change; a user's own flagfile replaces it entirely.
  """
  if any(a.startswith(('--flagfile', '-flagfile')) for a in argv[1:]):
    return list(argv)
  return [argv[0], f'--flagfile={flagfile}'] + list(argv[1:])


def parse_flagfiles(paths: Sequence[str]) -> config_lib.ExperimentConfig:
  """Settings from flagfiles alone (later ones override earlier ones).

  Parsed on fresh `FlagValues`, so the process's own flags are untouched;
  used by --mode=grid for each row.
  """
  fv = flags.FlagValues()
  define_flags(fv)
  fv(['main.py'] + [f'--flagfile={p}' for p in paths])
  return config_from_flags(fv)


def run(config: config_lib.ExperimentConfig) -> int:
  """Runs `config.mode`; returns the process exit code.

  Known failures (missing data, diverged training, a mismatched output_dir,
  a bad grid flagfile, an existing export version, a serving error) are
  logged as one clear message and give exit code 1.
  """
  # Imported here so that flag parsing, and its errors, come before
  # TensorFlow starts (and so MultiWorkerMirroredStrategy is made first).
  from tf_slwta import data as data_lib  # pylint: disable=g-import-not-at-top
  from tf_slwta.export import client  # pylint: disable=g-import-not-at-top
  from tf_slwta.training import distribute  # pylint: disable=g-import-not-at-top
  from tf_slwta.training import loop  # pylint: disable=g-import-not-at-top

  # TF logs an INFO line through absl at every checkpoint save; keep it out.
  logging.get_absl_logger().addFilter(
      lambda record: 'Sharding callback' not in record.getMessage())
  try:
    if config.mode == 'export':
      _run_export(config)
    elif config.mode == 'predict':
      _run_predict(config)
    else:
      strategy = distribute.make_strategy(config.train.strategy)
      logging.info('Strategy %s with %d replica(s); settings:\n%s',
                   type(strategy).__name__, strategy.num_replicas_in_sync,
                   config.to_json())
      if config.mode == 'grid':
        _run_grid(config, strategy)
      elif config.mode == 'certify':
        _run_certify(config, strategy)
      else:
        _run_one(config, strategy)
  except (data_lib.DataError, loop.TrainingDiverged, loop.RunMismatch,
          client.ServingError, FileNotFoundError, FileExistsError, ValueError,
          flags.Error) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def _perturbation(config: config_lib.ExperimentConfig, strategy):
  """The training batches' perturbation: the attack mixture, or none."""
  from tf_slwta.defenses import mixture  # pylint: disable=g-import-not-at-top
  from tf_slwta.training import loop  # pylint: disable=g-import-not-at-top
  if not config.train.mixture:
    return loop.identity_perturbation
  return mixture.AttackMixture(config.train.mixture, config.attack,
                               config.train.noise_sigma, strategy,
                               gradient=config.train.mixture_gradient)


def _run_one(config: config_lib.ExperimentConfig, strategy,
             reuse_robustness: bool = False):
  """--mode=train or evaluate: clean metrics and, if asked, the attacks.

  Returns:
    (clean metrics {'accuracy', 'loss', 'examples'}, robustness rows or None).
  """
  from tf_slwta import data as data_lib  # pylint: disable=g-import-not-at-top
  from tf_slwta.evaluation import robustness  # pylint: disable=g-import-not-at-top
  from tf_slwta.layers import ibp  # pylint: disable=g-import-not-at-top
  from tf_slwta.training import distribute  # pylint: disable=g-import-not-at-top
  from tf_slwta.training import loop  # pylint: disable=g-import-not-at-top

  chief = distribute.is_chief(strategy)
  if config.mode == 'train':
    record = loop.train(config, strategy,
                        perturb=_perturbation(config, strategy))
    clean = {'accuracy': record['test/accuracy'], 'loss': record['test/loss'],
             'examples': record['test/examples']}
    attack = config.evaluate_robustness and bool(config.attack.attacks)
    model = loop.restore_model(config, strategy) if (
        attack or config.model.ibp or config.model.activation == 'lwta'
    ) and chief else None
  else:
    model = loop.restore_model(config, strategy)
    clean = loop.evaluate_model(config, strategy, model)
    attack = bool(config.attack.attacks)
  rows = None
  if attack and chief:
    meta = {'scoring': robustness.SCORING,
            'output_dir': config.output_dir, 'dataset': config.data.dataset,
            'model': config.model.name,
            'checkpoint': _latest_checkpoint(config.output_dir),
            'eval_examples': config.data.eval_examples,
            'attack_settings': config.to_dict()['attack']}
    rows = robustness.load_report(config.output_dir, meta) if (
        reuse_robustness) else None
    if rows is None:
      images, labels = data_lib.load_arrays(config.data, 'test')
      examples = robustness.Examples()  # For the figures.
      rows = robustness.evaluate_robustness(
          lambda x: model(x, training=False), images, labels, config.attack,
          batch_size=config.data.eval_batch_size, examples=examples)
      robustness.write_report(rows, config.output_dir, meta=meta,
                              examples=examples)
  if chief:
    print(f'\nResults of {config.output_dir} ({config.data.dataset}, '
          f'{config.model.name}):')
    loop.print_table({'test': clean})
    if rows is not None:
      print(f'\nRobustness on {rows[0]["examples"]} test images (also in '
            f'{os.path.join(config.output_dir, "robustness.md")}, .csv, '
            f'.json):')
      robustness.print_table(rows)
    if config.model.ibp and model is not None:
      pruned = ibp.pruned_fractions(model)
      with open(os.path.join(config.output_dir, 'ibp_pruned.json'), 'w') as f:
        json.dump(pruned, f, indent=2, sort_keys=True)
      print('\nIBP: share of blocks pruned at test time (utility <= '
            f'{config.model.ibp_threshold}): ' + ', '.join(
                f'{k} {100 * v:.1f}%' for k, v in pruned.items()))
    print(f'Checkpoints: {os.path.join(config.output_dir, "checkpoints")}\n'
          f'TensorBoard: tensorboard --logdir '
          f'{os.path.join(config.output_dir, "summaries")}')
    _write_html_report(config, model)
  return clean, rows


def _write_html_report(config: config_lib.ExperimentConfig, model=None):
  """Draws the run's figures into report.html and says where it is."""
  from tf_slwta.evaluation import report  # pylint: disable=g-import-not-at-top
  print(f'Report (tables and figures): {report.write_report(config, model)}',
        flush=True)


def _latest_checkpoint(output_dir: str):
  """Path of the run's latest checkpoint, or None."""
  from tf_slwta.training import loop  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.train.latest_checkpoint(loop.checkpoint_dir(output_dir))


def _run_certify(config: config_lib.ExperimentConfig, strategy) -> None:
  """--mode=certify: randomized smoothing of the latest checkpoint."""
  from tf_slwta import data as data_lib  # pylint: disable=g-import-not-at-top
  from tf_slwta.evaluation import certify  # pylint: disable=g-import-not-at-top
  from tf_slwta.training import loop  # pylint: disable=g-import-not-at-top
  model = loop.restore_model(config, strategy)
  images, labels = data_lib.load_arrays(config.data, 'test')
  info = data_lib.dataset_info(config.data.dataset)
  result = certify.certify_dataset(lambda x: model(x, training=False), images,
                                   labels, config.certify, info.num_classes,
                                   seed=config.train.seed)
  paths = certify.write_report(result, config.output_dir)
  print(f'\nRandomized smoothing of {config.output_dir} (also in '
        f'{paths["md"]}, {paths["json"]}):')
  print(certify.markdown_table(result))
  _write_html_report(config, model)


def _run_grid(config: config_lib.ExperimentConfig, strategy) -> None:
  """--mode=grid: train and evaluate every row, then one consolidated table."""
  from tf_slwta.evaluation import report  # pylint: disable=g-import-not-at-top
  from tf_slwta.evaluation import robustness  # pylint: disable=g-import-not-at-top
  patterns = config.grid or (os.path.join('flags', 'seed_table', '[0-9]*.cfg'),)
  rows = [path for pattern in patterns
          for path in (sorted(glob.glob(pattern)) if glob.has_magic(pattern)
                       else [pattern])]
  if not rows:
    raise FileNotFoundError('--mode=grid found no flagfiles: pass --grid=A.cfg,'
                            'B.cfg or run from the repository root.')
  results = []
  for path in rows:
    if not os.path.exists(path):
      raise FileNotFoundError(f'Grid flagfile {path} does not exist.')
    row_config = parse_flagfiles(
        [path] + ([config.grid_overrides] if config.grid_overrides else []))
    row_config = dataclasses.replace(row_config, mode='train',
                                     evaluate_robustness=True)
    print(f'\n=== grid row {path} -> {row_config.output_dir} ===', flush=True)
    clean, attack_rows = _run_one(row_config, strategy, reuse_robustness=True)
    results.append({'row': os.path.splitext(os.path.basename(path))[0],
                    'flagfile': path, 'output_dir': row_config.output_dir,
                    'clean_accuracy': clean['accuracy'],
                    'attacks': attack_rows})
  # The table goes beside the runs it sums up (runs/seed_table/ by default).
  paths = robustness.write_grid(
      results, os.path.commonpath([r['output_dir'] for r in results])
      if len(results) > 1 else config.output_dir)
  paths['html'] = report.write_grid_report(paths['json'])  # Links each row.
  print(f'\nGrid of {len(results)} runs (also in {paths["md"]}, '
        f'{paths["csv"]}, {paths["json"]}, {paths["html"]}):\n')
  print(open(paths['md']).read())


def _run_export(config: config_lib.ExperimentConfig) -> None:
  """--mode=export: the latest checkpoint as a SavedModel for TF Serving."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf_slwta import data as data_lib  # pylint: disable=g-import-not-at-top
  from tf_slwta.export import saved_model  # pylint: disable=g-import-not-at-top
  from tf_slwta.training import loop  # pylint: disable=g-import-not-at-top
  name = config.export.model_name(config.output_dir)
  # One device: the export holds plain variables, whatever trained them.
  model = loop.restore_model(config, tf.distribute.get_strategy())
  info = data_lib.dataset_info(config.data.dataset)
  path = saved_model.export_model(
      model, export_dir=config.export.export_dir, name=name,
      image_shape=info.image_shape, mc_samples=config.attack.mc_samples,
      version=config.export.version,
      warmup_batch_sizes=config.export.warmup_batch_sizes,
      sampling_mode=config.export.sampling,
      info={'dataset': info.name, 'class_names': list(info.class_names),
            'checkpoint': _latest_checkpoint(config.output_dir),
            'output_dir': config.output_dir, 'settings': config.to_dict()})
  sampling = saved_model.sampling_for(model, config.attack.mc_samples,
                                      config.export.sampling)
  export_dir = config.export.export_dir
  mount = export_dir if os.path.isabs(export_dir) else f'$PWD/{export_dir}'
  print(f'\nExported {name} version {os.path.basename(path)} to {path}\n'
        f'  signatures: serving_default (images -> probabilities averaged '
        f'over {sampling.passes} pass(es), {sampling.mode}; classes), '
        f'logits (one pass)\n'
        f'  sampling: {saved_model.SAMPLING_NOTES[sampling.mode]}\n'
        f'  TF Serving config: {os.path.join(export_dir, "models.config")} '
        f'(Docker, {export_dir} mounted at /models) and '
        f'{os.path.join(export_dir, "models.local.config")}\n'
        f'  serve: docker run --rm -p 8500:8500 -p 8501:8501 -v '
        f'"{mount}:/models" tensorflow/serving '
        f'--model_config_file=/models/models.config\n'
        f'  call:  python main.py --mode=predict --dataset={info.name} '
        f'--export_name={name} --server=localhost:8501')


def _run_predict(config: config_lib.ExperimentConfig) -> None:
  """--mode=predict: classify image files or the test split via TF Serving."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tf_slwta import data as data_lib  # pylint: disable=g-import-not-at-top
  from tf_slwta.export import client as client_lib  # pylint: disable=g-import-not-at-top
  serve = config.serve
  name = serve.model_name or config.export.model_name(config.output_dir)
  info = data_lib.dataset_info(config.data.dataset)
  client = client_lib.make_client(serve.protocol, serve.server, name,
                                  version=serve.version or None,
                                  timeout=serve.timeout)
  if serve.images:
    images, labels = data_lib.load_image_files(serve.images,
                                               info.image_shape), None
    source = f'{len(images)} image file(s)'
  else:
    images, labels = data_lib.load_arrays(config.data, 'test')
    images = data_lib.to_float_image(images).numpy()
    source = f'{len(images)} {info.name} test images'
  probabilities, classes = [], []
  try:
    for start in range(0, len(images), serve.batch_size):
      outputs = client.predict(images[start:start + serve.batch_size])
      probabilities.append(outputs['probabilities'])
      classes.append(outputs['classes'])
  finally:
    client.close()
  probabilities = np.concatenate(probabilities)
  classes = np.concatenate(classes)
  print(f'\n{name} at {serve.server} ({serve.protocol}) on {source}:')
  if serve.images:
    for path, k, p in zip(serve.images, classes, probabilities):
      print(f'  {path}: {info.class_names[k]} (class {k}, '
            f'p = {p[k]:.3f})')
  else:
    accuracy = float(np.mean(classes == labels))
    print(f'  accuracy {100 * accuracy:.2f}% ({int(np.sum(classes == labels))}'
          f' of {len(labels)})')

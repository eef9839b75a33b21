"""Parsed flag values -> the frozen `ExperimentConfig`, and the validators.

Cross-field rules live in the dataclasses of `config`; `register_validators`
runs them while the command line is parsed, so a bad value or combination is
refused before any work, naming the flag.
"""

import os
from typing import Sequence

from absl import flags

from tf_slwta import config as config_lib
from tf_slwta.cli import definitions
from tf_slwta.training import tf_config


# Flags whose settings field has another name: {flag: (section, field)}.
_RENAMED = {
    'model': ('model', 'name'), 'attack_seed': ('attack', 'seed'),
    'certify_sigma': ('certify', 'sigma'), 'certify_n0': ('certify', 'n0'),
    'certify_n': ('certify', 'n'), 'certify_alpha': ('certify', 'alpha'),
    'certify_batch_size': ('certify', 'batch_size'),
    'certify_radii': ('certify', 'radii'),
    'export_name': ('export', 'name'), 'export_version': ('export', 'version'),
    'export_sampling': ('export', 'sampling'),
    'serving_protocol': ('serve', 'protocol'),
    'serving_timeout': ('serve', 'timeout'),
    'serving_batch_size': ('serve', 'batch_size'),
    'audit_sweep_examples': ('audit', 'sweep_examples'),
    'audit_eps_multiples': ('audit', 'eps_multiples'),
    'audit_steps': ('audit', 'sweep_steps'),
    'audit_noise_draws': ('audit', 'noise_draws'),
    'audit_eps_spot': ('audit', 'eps_spot'),
    'audit_tolerance': ('audit', 'tolerance'),
    'audit_chance_share': ('audit', 'chance_share'),
    'audit_escalate': ('audit', 'escalate'),
    'audit_escalation_rounds': ('audit', 'escalation_rounds'),
    'audit_escalation_queries': ('audit', 'escalation_queries'),
    'audit_distill_examples': ('audit', 'distill_examples'),
    'audit_distill_pool': ('audit', 'distill_pool'),
}
# Flags that set a field in a second section: {flag: (section, field)}.
# --export_name and --export_version name the export and, for
# --mode=predict, the served model and version asked for.
_ALSO = {'export_name': ('serve', 'model_name'),
         'export_version': ('serve', 'version')}
# Every sectioned flag -> the (section, field) pairs it sets.
FIELDS = {}
for _section, _names in definitions.SECTIONS.items():
  for _name in _names:
    FIELDS.setdefault(_name, (_RENAMED.get(_name, (_section, _name)),) +
                      ((_ALSO[_name],) if _name in _ALSO else ()))


def register_validators(fv: flags.FlagValues) -> None:
  """Registers the checks absl runs while parsing (the rest: `config_from_values`)."""
  flags.register_validator('strategy', _check_strategy, flag_values=fv)


def _check_strategy(value: str) -> bool:
  if value == 'multi_worker':
    problem = tf_config.tf_config_error()
    if problem:
      raise flags.ValidationError(problem)
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
      **{name: v[name] for name in definitions.SECTIONS['model'] if name not in special})


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
      name: v[name] for name in definitions.SECTIONS['train'] if name not in special
  }, lr_decay_epochs=_int_list('lr_decay_epochs', v['lr_decay_epochs']),
      mixture=_mixture(v['mixture']))


def _audit_config(v) -> config_lib.AuditConfig:
  try:
    multiples = tuple(float(m) for m in v['audit_eps_multiples'])
  except ValueError as e:
    raise ValueError('--audit_eps_multiples takes comma-separated '
                     'numbers.') from e
  return config_lib.AuditConfig(
      sweep_examples=v['audit_sweep_examples'], eps_multiples=multiples,
      sweep_steps=_int_list('audit_steps', v['audit_steps']),
      noise_draws=v['audit_noise_draws'], eps_spot=v['audit_eps_spot'],
      tolerance=v['audit_tolerance'],
      chance_share=v['audit_chance_share'], escalate=v['audit_escalate'],
      escalation_rounds=v['audit_escalation_rounds'],
      escalation_queries=v['audit_escalation_queries'],
      distill_examples=v['audit_distill_examples'],
      distill_pool=v['audit_distill_pool'])


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
  special = ('attacks', 'attack_seed', 'gradient_modes',
             'randomized_mode_attacks')
  names = [n for n in definitions.SECTIONS['attack'] if n not in special]
  return config_lib.AttackConfig(
      attacks=tuple(v['attacks']), seed=v['attack_seed'],
      gradient_modes=tuple(v['gradient_modes']),
      randomized_mode_attacks=tuple(v['randomized_mode_attacks']),
      **{name: v[name] for name in names})


def config_from_values(fv: flags.FlagValues) -> config_lib.ExperimentConfig:
  """Builds the run's `ExperimentConfig` from parsed flags.

  Raises:
    ValueError: a value or combination the settings refuse, naming it.
  """
  values = {name: fv[name].value for names in definitions.SECTIONS.values()
            for name in names}
  return config_lib.ExperimentConfig(
      mode=fv.mode, output_dir=fv.output_dir,
      evaluate_robustness=fv.evaluate_robustness, data=_data_config(values),
      model=_model_config(values), train=_train_config(values),
      attack=_attack_config(values), audit=_audit_config(values),
      certify=_certify_config(values),
      export=_export_config(values), serve=_serve_config(values),
      grid=tuple(fv.grid), grid_overrides=fv.grid_overrides)

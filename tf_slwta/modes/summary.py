"""The one line a run prints about its settings (all of them: config.json)."""

import os

from tf_slwta import config as config_lib
from tf_slwta import run_folder


def _model(config: config_lib.ExperimentConfig) -> str:
  m = config.model
  name = (f'wide_resnet-{m.depth}-{m.widen_factor}'
          if m.name == 'wide_resnet' else m.name)
  parts = [name, m.activation] + (['ibp'] if m.ibp else []) + (
      [f'pni={m.pni}'] if m.pni != 'none' else [])
  return ' '.join(parts)


def _examples(n: int) -> str:
  return 'all' if n == 0 else str(n)


def _attacks(config: config_lib.ExperimentConfig) -> str:
  """'attacks fgsm (Linf 0.3), apgd_ce+apgd_dlr (Linf 0.1, 100 steps); ...':
  each attack with the threat model and budget it runs at."""
  a = config.attack
  if not a.attacks:
    return 'no attacks'
  budget = {'pgd_linf': f'{a.pgd_steps} steps', 'pgd_l2': f'{a.pgd_steps} steps',
            'cw': f'{a.cw_steps} steps', 'apgd_ce': f'{a.apgd_steps} steps',
            'apgd_dlr': f'{a.apgd_steps} steps',
            'apgd_t': f'{a.apgd_steps} steps',
            'square': f'{a.square_queries} queries',
            'transfer': f'{a.apgd_steps} steps'}
  groups = {}  # (threat, budget) -> attacks, in order.
  for name in a.attacks:
    key = (a.threat_model(name), budget.get(name, ''))
    groups.setdefault(key, []).append(name)
  parts = [f'{"+".join(names)} ({", ".join(p for p in key if p)})'
           for key, names in groups.items()]
  modes = ','.join(a.gradient_modes)
  return (f'attacks {", ".join(parts)}; EOT {a.eot_samples}, MC '
          f'{a.mc_samples}, gradient modes {modes}')


def _served_name(config: config_lib.ExperimentConfig) -> str:
  """The export's model name, or the folder's if unusable (the mode says so)."""
  try:
    return config.export.model_name(config.output_dir)
  except ValueError:
    return os.path.basename(os.path.normpath(config.output_dir))


def line(config: config_lib.ExperimentConfig) -> str:
  """One line: the mode, the run and its main settings."""
  d, t = config.data, config.train
  where = config.output_dir
  saved = os.path.join(where, run_folder.CONFIG_FILE)
  if config.mode == 'train':
    mixture = ','.join(f'{n}:{w:g}' for n, w in t.mixture) or 'clean'
    text = (f'{d.dataset} ({_examples(d.train_examples)} train, '
            f'{_examples(d.eval_examples)} test), {_model(config)}, '
            f'{t.epochs} epoch{"s" * (t.epochs != 1)} of batch {d.batch_size}, '
            f'lr {t.learning_rate} '
            f'{t.lr_schedule}, {mixture} training')
    if config.evaluate_robustness:
      text += f', then {_attacks(config)}'
  elif config.mode == 'evaluate':
    text = (f'{_model(config)} on {_examples(d.eval_examples)} '
            f'{d.dataset} test images, {_attacks(config)}')
  elif config.mode == 'audit':
    u = config.audit
    text = (f'{_model(config)} on {_examples(d.eval_examples)} '
            f'{d.dataset} test images, around '
            f'{config.attack.threat_model("apgd_ce")} (eps sweep x '
            f'{",".join(f"{m:g}" for m in u.eps_multiples)}), '
            f'{_attacks(config)}')
  elif config.mode == 'certify':
    c = config.certify
    text = (f'{_model(config)} on {_examples(d.eval_examples)} '
            f'{d.dataset} test images, sigma {c.sigma}, n0 {c.n0}, n {c.n}, '
            f'alpha {c.alpha}')
  elif config.mode == 'export':
    e = config.export
    text = (f'{_model(config)} -> {e.export_dir}/'
            f'{_served_name(config)}/{e.version or "next"}, '
            f'{config.attack.mc_samples} pass(es) per request')
  elif config.mode == 'predict':
    s = config.serve
    source = (f'{len(s.images)} image file(s)' if s.images else
              f'{_examples(d.eval_examples)} {d.dataset} test images')
    name = s.model_name or _served_name(config)
    return f'predict: {source} through {name} at {s.server} ({s.protocol})'
  else:
    return f'grid: {len(config.grid) or "the seed table"} row pattern(s)'
  return f'{config.mode} {where}: {text}; all settings in {saved}'

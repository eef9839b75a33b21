"""--mode=export: a run's latest checkpoint as a SavedModel for TF Serving."""

import os

import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.export import saved_model
from tf_slwta.training import state


def run(config: config_lib.ExperimentConfig,
        folder: run_folder.RunFolder) -> str:
  """Writes `<export_dir>/<name>/<version>/` and prints how to serve it.

  Returns:
    The version folder written.
  """
  del folder  # config.output_dir names it.
  name = config.export.model_name(config.output_dir)
  run_folder.warn_if_unfinished(config.output_dir)
  run_folder.probe_writable(config.export.export_dir, '--export_dir')
  # One device: the export holds plain variables, whatever trained them.
  model = state.restore_model(config, tf.distribute.get_strategy())
  info = data_lib.dataset_info(config.data.dataset)
  path = saved_model.export_model(
      model, export_dir=config.export.export_dir, name=name,
      image_shape=info.image_shape, mc_samples=config.attack.mc_samples,
      version=config.export.version,
      warmup_batch_sizes=config.export.warmup_batch_sizes,
      sampling_mode=config.export.sampling,
      info={'dataset': info.name, 'class_names': list(info.class_names),
            'checkpoint': state.latest_checkpoint(config.output_dir),
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
  return path

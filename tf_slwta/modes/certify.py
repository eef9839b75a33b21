"""--mode=certify: randomized smoothing of a run's latest checkpoint."""

from typing import Optional

import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.evaluation import certify
from tf_slwta.layers import noise
from tf_slwta.modes import common
from tf_slwta.training import state


def run(config: config_lib.ExperimentConfig, folder: run_folder.RunFolder,
        strategy: Optional[tf.distribute.Strategy] = None) -> dict:
  """PREDICT and CERTIFY (Cohen et al.) on the test images; writes certify.*.

  Returns:
    The result dict of `certify.certify_dataset`.
  """
  strategy = strategy or common.make_strategy(config)
  run_folder.warn_if_unfinished(config.output_dir)
  with common.chief_lock(folder, strategy):
    model = state.restore_model(config, strategy)
    certify.check_independent_votes(noise.batch_shared_layers(model),
                                    config.certify.batch_size)
    images, labels = data_lib.load_arrays(config.data, 'test')
    info = data_lib.dataset_info(config.data.dataset)
    result = certify.certify_dataset(
        lambda x: model(x, training=False), images, labels, config.certify,
        info.num_classes, seed=config.train.seed)
    paths = certify.write_report(result, config.output_dir)
    print(f'\nRandomized smoothing of {config.output_dir} (also in '
          f'{paths["md"]}, {paths["json"]}):')
    print(certify.markdown_table(result))
    common.write_html_report(config, model)
  return result

"""What a served request costs, by how the export samples the model.

Exports untrained seed CNNs (the quickstart's sizes) as TF Serving would load
them and times `serving_default` on one request of `--batch_size` images,
loaded with `tf.saved_model.load` in this process. Requests are timed in
interleaved rounds (the median round is reported), so the ratios are
measured side by side. The PNI model is exported twice: sampled one example
at a time (what export does by default, so that an answer never depends on
the other images in a request) and batched (`--export_sampling=batched`: one
weight draw shared by the whole request).

    python benchmarks/serving.py
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import models
from tf_slwta.export import saved_model

_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds.')
_REQUESTS = flags.DEFINE_integer('requests', 3, 'Requests per round.')
_BATCH = flags.DEFINE_integer('batch_size', 100, 'Images per request.')
_MC = flags.DEFINE_integer('mc_samples', 10, 'Passes per stochastic model.')

VARIANTS = (  # name, model settings, --export_sampling.
    ('relu', {}, 'auto'),
    ('lwta', {'activation': 'lwta'}, 'auto'),
    ('pni_weight', {'pni': 'weight'}, 'auto'),
    ('pni_weight, --export_sampling=batched', {'pni': 'weight'}, 'batched'),
)


def main(argv):
  del argv
  info = data_lib.dataset_info('fashion_mnist')
  images = tf.constant(np.random.RandomState(0).rand(
      _BATCH.value, *info.image_shape).astype(np.float32))
  export_dir = tempfile.mkdtemp()
  served = {}
  for index, (name, settings, mode) in enumerate(VARIANTS):
    keras.utils.set_random_seed(0)
    model = models.build_model(config_lib.ModelConfig(**settings), info)
    sampling = saved_model.sampling_for(model, _MC.value, mode)
    path = saved_model.export_model(
        model, export_dir=export_dir, name=f'm{index}',
        image_shape=info.image_shape, mc_samples=_MC.value,
        sampling_mode=mode)
    function = tf.saved_model.load(path).signatures['serving_default']
    function(images=images)  # Warm-up, as TF Serving does at load.
    served[name] = (sampling, function, [])
  for _ in range(_ROUNDS.value):
    for sampling, function, times in served.values():
      start = time.perf_counter()
      for _ in range(_REQUESTS.value):
        function(images=images)
      times.append((time.perf_counter() - start) / _REQUESTS.value)
  base = statistics.median(served['relu'][2])
  print(f'| model | sampling | passes | ms per request of {_BATCH.value} '
        f'images | x relu |\n|---|---|---|---|---|')
  for name, (sampling, _, times) in served.items():
    median = statistics.median(times)
    print(f'| {name} | {sampling.mode} | {sampling.passes} | '
          f'{1000 * median:.0f} | {median / base:.1f} |')


if __name__ == '__main__':
  app.run(main)

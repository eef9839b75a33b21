"""--mode=predict: classify image files or the test split through TF Serving."""

import numpy as np

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import progress as progress_lib
from tf_slwta import run_folder
from tf_slwta.export import client as client_lib


def run(config: config_lib.ExperimentConfig,
        folder: run_folder.RunFolder) -> np.ndarray:
  """Sends `--images` (or the test split) to the served model; prints answers.

  Returns:
    int64 `[N]`: the served model's classes.
  """
  del folder  # config.output_dir names the default model.
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
  progress = progress_lib.Progress('predict', len(images), unit='image')
  try:
    for start in range(0, len(images), serve.batch_size):
      chunk = images[start:start + serve.batch_size]
      progress.start(f'{serve.protocol} requests to {serve.server}')
      outputs = client.predict(chunk, num_classes=info.num_classes)
      probabilities.append(outputs['probabilities'])
      classes.append(outputs['classes'])
      progress.advance(len(chunk))
  finally:
    client.close()
    progress.close()
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
  return classes

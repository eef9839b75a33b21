"""Image data: loading, and the tf.data pipelines fed to a tf.distribute strategy.

Every data set is held in memory as uint8 images `[N, H, W, C]` and int64
labels `[N]`; pipelines turn pixels into float32 in [0, 1]. Normalization is
not done here: it lives inside the model, so attacks work in pixel space.

Training pipelines are built per epoch from a permutation seeded by
`(seed, epoch)`, and augmentation uses stateless random ops seeded by
`(seed, epoch, example index)`. A run resumed at step s of epoch e therefore
sees exactly the batches the interrupted run would have seen.
"""

import dataclasses
import gzip
import os
import struct
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib

DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
_HOW_TO_GET_FASHION_MNIST = (
    'Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/'
    f'Ubuntu; files go to {DEBIAN_FASHION_MNIST_DIR}), or put the four IDX '
    '.gz files from https://github.com/zalandoresearch/fashion-mnist in a '
    'folder and pass --data_dir=FOLDER.')

Arrays = Tuple[np.ndarray, np.ndarray]


class DataError(ValueError):
  """A data set is missing, unreadable or inconsistent."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a data set that models and reports need.

  Attributes:
    name: data set name.
    image_shape: (height, width, channels).
    num_classes: number of labels; labels are in [0, num_classes).
    class_names: readable name per label.
    mean, std: per-channel pixel statistics of the training set in [0, 1]
      pixel units, used by the model's normalization layer.
  """
  name: str
  image_shape: Tuple[int, int, int]
  num_classes: int
  class_names: Tuple[str, ...]
  mean: Tuple[float, ...]
  std: Tuple[float, ...]


DATASET_INFO = {
    'fashion_mnist': DatasetInfo(
        'fashion_mnist', (28, 28, 1), 10,
        ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
         'Shirt', 'Sneaker', 'Bag', 'Ankle boot'), (0.2860,), (0.3530,)),
    'mnist': DatasetInfo(
        'mnist', (28, 28, 1), 10, tuple(str(i) for i in range(10)),
        (0.1307,), (0.3081,)),
    'cifar10': DatasetInfo(
        'cifar10', (32, 32, 3), 10,
        ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
         'horse', 'ship', 'truck'), (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616)),
    'synthetic': DatasetInfo(
        'synthetic', (28, 28, 1), 10,
        tuple(f'pattern {i}' for i in range(10)), (0.5,), (0.25,)),
}
SYNTHETIC_SIZES = {'train': 4096, 'test': 1024}


def dataset_info(name: str) -> DatasetInfo:
  """Returns the `DatasetInfo` of data set `name` (one of config.DATASETS)."""
  if name not in DATASET_INFO:
    raise ValueError(f'Unknown dataset {name!r}; choose one of '
                     f'{", ".join(DATASET_INFO)}.')
  return DATASET_INFO[name]


# ----------------------------------------------------------------------------
# Loading arrays.


def read_idx(path: str) -> np.ndarray:
  """Reads one gzipped IDX file (the MNIST/Fashion-MNIST format).

  Args:
    path: a `.gz` IDX file with unsigned-byte data (type code 0x08).

  Returns:
    uint8 array with the file's dimensions: `[N, H, W]` for images, `[N]`
    for labels.

  Raises:
    DataError: the file is missing, not gzip, not IDX, or truncated; the
      message names the path.
  """
  if not os.path.exists(path):
    raise DataError(f'{path} does not exist. {_HOW_TO_GET_FASHION_MNIST}')
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError.
    raise DataError(f'{path} is not a readable gzip file ({e}); the download '
                    f'is probably corrupt. Delete it and get it again. '
                    f'{_HOW_TO_GET_FASHION_MNIST}') from e
  if len(raw) < 4:
    raise DataError(f'{path} is too short to be an IDX file.')
  zero, dtype_code, ndim = struct.unpack('>HBB', raw[:4])
  if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
    raise DataError(
        f'{path} is not an unsigned-byte IDX file (header {raw[:4].hex()}). '
        f'{_HOW_TO_GET_FASHION_MNIST}')
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f'{path} is truncated inside its header.')
  dims = struct.unpack('>' + 'I' * ndim, raw[4:header])
  expected = int(np.prod(dims))
  if len(raw) - header != expected:
    raise DataError(
        f'{path} holds {len(raw) - header} data bytes but its header '
        f'promises {expected} ({"x".join(map(str, dims))}); the file is '
        f'truncated or corrupt. {_HOW_TO_GET_FASHION_MNIST}')
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_fashion_mnist_dir(data_dir: Optional[str]) -> Optional[str]:
  candidates = ([data_dir] if data_dir else []) + [DEBIAN_FASHION_MNIST_DIR]
  for folder in candidates:
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    if all(os.path.exists(os.path.join(folder, n)) for n in names):
      return folder
  return None


def load_fashion_mnist(split: str, data_dir: Optional[str] = None,
                       download: bool = True) -> Arrays:
  """Loads Fashion-MNIST from IDX files, or downloads it through Keras.

  Search order: `data_dir`, then Debian's `/usr/share/datasets/fashion-mnist`,
  then (if `download`) `keras.datasets.fashion_mnist`, which needs a network.

  Args:
    split: 'train' (60,000 images) or 'test' (10,000 images).
    data_dir: folder with the four IDX `.gz` files, or None.
    download: try the Keras download when no local copy exists.

  Returns:
    (images uint8 `[N, 28, 28, 1]`, labels int64 `[N]` in [0, 10)).
  """
  if data_dir and not os.path.isdir(data_dir):
    raise DataError(f'--data_dir={data_dir} is not a folder. '
                    f'{_HOW_TO_GET_FASHION_MNIST}')
  if data_dir:  # Named by the user: it must be complete, never skipped.
    names = [n for pair in FASHION_MNIST_FILES.values() for n in pair]
    missing = [n for n in names if not os.path.exists(
        os.path.join(data_dir, n))]
    if len(missing) == len(names):
      raise DataError(f'Fashion-MNIST not found in --data_dir={data_dir}. '
                      f'{_HOW_TO_GET_FASHION_MNIST}')
    if missing:
      raise DataError(
          f'--data_dir={data_dir} lacks {", ".join(missing)} (Fashion-MNIST '
          f'needs all four IDX files: {", ".join(names)}). Add '
          f'{"it" if len(missing) == 1 else "them"}, or drop --data_dir to '
          f'use {DEBIAN_FASHION_MNIST_DIR}.')
  folder = _find_fashion_mnist_dir(data_dir)
  if folder is not None:
    image_file, label_file = FASHION_MNIST_FILES[split]
    images = read_idx(os.path.join(folder, image_file))
    labels = read_idx(os.path.join(folder, label_file))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise DataError(
          f'{folder}: {image_file} has shape {images.shape} and {label_file} '
          f'has shape {labels.shape}; expected [N, 28, 28] and [N].')
    return images[..., None], labels.astype(np.int64)
  searched = ', '.join(([data_dir] if data_dir else []) +
                       [DEBIAN_FASHION_MNIST_DIR])
  if not download:
    raise DataError(f'Fashion-MNIST not found in {searched}. '
                    f'{_HOW_TO_GET_FASHION_MNIST}')
  import keras  # pylint: disable=g-import-not-at-top
  try:
    (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
        f'Fashion-MNIST not found in {searched}, and the download through '
        f'Keras failed ({type(e).__name__}: {e}). '
        f'{_HOW_TO_GET_FASHION_MNIST}') from e
  images, labels = (x_train, y_train) if split == 'train' else (x_test, y_test)
  return images[..., None], labels.astype(np.int64)


def load_tfds(name: str, split: str, tfds_data_dir: Optional[str] = None,
              download: bool = True) -> Arrays:
  """Loads `mnist` or `cifar10` through tensorflow-datasets into memory.

  Args:
    name: TFDS name, 'mnist' or 'cifar10'.
    split: 'train' or 'test'.
    tfds_data_dir: TFDS data folder; None for TFDS's default (~/tensorflow_datasets).
    download: let TFDS download and prepare the data when it is missing.

  Returns:
    (images uint8 `[N, H, W, C]`, labels int64 `[N]`).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    # Batches of 4096 rather than batch_size=-1: the latter aborts the
    # process on datasets of unknown size (as tfds.testing.mock_data makes).
    batches = list(tfds.as_numpy(tfds.load(
        name, split=split, data_dir=tfds_data_dir, as_supervised=True,
        download=download).batch(4096)))
  except ImportError as e:  # Not the network: a module tfds imports late.
    module = e.name or str(e)
    raise DataError(
        f'tensorflow-datasets could not load {name}: the Python module '
        f'{module} is not installed ({e}). Install the package that provides '
        f'it (for most: pip install {module}), or reinstall tf_slwta, whose '
        f'setup.py lists the ones it needs.') from e
  except Exception as e:  # pylint: disable=broad-except
    where = tfds_data_dir or '~/tensorflow_datasets'
    raise DataError(
        f'Could not load {name}/{split} through tensorflow-datasets from '
        f'{where} ({type(e).__name__}: {e}). On a machine with a network, '
        f'run once with download allowed (the default) or prepare it with '
        f'`tfds build {name} --data_dir=DIR` and pass --tfds_data_dir=DIR.'
    ) from e
  if not batches:
    raise DataError(f'{name}/{split} from tensorflow-datasets is empty.')
  return (np.concatenate([b[0] for b in batches]).astype(np.uint8),
          np.concatenate([b[1] for b in batches]).astype(np.int64))


def make_synthetic(split: str, num_examples: Optional[int] = None) -> Arrays:
  """A small learnable stand-in data set that needs no files.

  Each of 10 classes has a fixed random 28x28 template; an image is its
  class template blended with per-image noise, so a small CNN learns it in a
  few hundred steps. Templates are the same for both splits; noise differs.

  Args:
    split: 'train' or 'test'.
    num_examples: how many images; default `SYNTHETIC_SIZES[split]`.

  Returns:
    (images uint8 `[N, 28, 28, 1]`, labels int64 `[N]` in [0, 10)).
  """
  n = num_examples or SYNTHETIC_SIZES[split]
  templates = np.random.default_rng(1234).random((10, 28, 28, 1))
  rng = np.random.default_rng(0 if split == 'train' else 1)
  labels = rng.integers(0, 10, size=n)
  noise = rng.random((n, 28, 28, 1))
  images = 0.55 * templates[labels] + 0.45 * noise
  return np.round(images * 255).astype(np.uint8), labels.astype(np.int64)


def load_arrays(data: config_lib.DataConfig, split: str) -> Arrays:
  """Loads one split of the configured data set, cut to its example limit.

  Args:
    data: data settings; `train_examples`/`eval_examples` cut the split.
    split: 'train' or 'test'.

  Returns:
    (images uint8 `[N, H, W, C]`, labels int64 `[N]`).
  """
  if split not in ('train', 'test'):
    raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
  limit = data.train_examples if split == 'train' else data.eval_examples
  if data.dataset == 'fashion_mnist':
    images, labels = load_fashion_mnist(split, data.data_dir, data.download)
  elif data.dataset == 'synthetic':
    images, labels = make_synthetic(split, limit or None)
  else:
    tfds_split = f'{split}[:{limit}]' if limit else split
    images, labels = load_tfds(data.dataset, tfds_split, data.tfds_data_dir,
                               data.download)
  where = _source(data, split)
  if limit and limit > len(images):
    name = 'train_examples' if split == 'train' else 'eval_examples'
    raise DataError(f'--{name}={limit}, but {where} holds only '
                    f'{len(images)} images; pass at most {len(images)} (0: '
                    f'all).')
  if limit:
    images, labels = images[:limit], labels[:limit]
  info = dataset_info(data.dataset)
  if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
    bad = np.unique(labels[(labels < 0) | (labels >= info.num_classes)])
    raise DataError(
        f'{where} has labels outside [0, {info.num_classes}) '
        f'({", ".join(map(str, bad[:5]))}{", ..." if len(bad) > 5 else ""}): '
        f'it is not {data.dataset} data or is damaged. Replace it with the '
        f'original files.')
  if images.shape[1:] != info.image_shape:
    raise DataError(f'{data.dataset}/{split} images have shape '
                    f'{images.shape[1:]}, expected {info.image_shape}.')
  if len(images) == 0:
    raise DataError(f'{data.dataset}/{split} is empty.')
  return images, labels


def _source(data: config_lib.DataConfig, split: str) -> str:
  """Where a split is read from, for messages."""
  if data.dataset == 'fashion_mnist':
    folder = _find_fashion_mnist_dir(data.data_dir)
    if folder:
      return os.path.join(folder, FASHION_MNIST_FILES[split][1])
  return f'{data.dataset}/{split}'


def load_image_files(paths: Sequence[str],
                     image_shape: Tuple[int, int, int]) -> np.ndarray:
  """Reads image files as a model input batch.

  Each file (PNG, JPEG, GIF or BMP) is decoded with `tf.io.decode_image`,
  its alpha channel dropped, turned grey or colour to match the model's
  channels, and resized with `tf.image.resize` (bilinear, antialiased) when
  its size differs.

  Args:
    paths: one or more image files.
    image_shape: (H, W, C) the model takes, C 1 or 3.

  Returns:
    float32 `[len(paths), H, W, C]` in [0, 1].

  Raises:
    DataError: no paths, or a file cannot be read or decoded; the message
      names the file and TensorFlow's reason.
  """
  if not paths:
    raise DataError('No image files given; pass --images=A.png,B.jpg.')
  height, width, channels = image_shape
  images = []
  for path in paths:
    try:
      # channels=0 keeps the file's own: GIF and BMP decode to colour only.
      image = tf.io.decode_image(tf.io.read_file(path), channels=0,
                                 expand_animations=False)
    except tf.errors.OpError as e:
      raise DataError(f'{path} is not a readable PNG, JPEG, GIF or BMP '
                      f'image: {e.message}') from e
    image = tf.image.convert_image_dtype(image, tf.float32)
    if image.shape[-1] in (2, 4):  # Grey or colour with alpha.
      image = image[..., :image.shape[-1] - 1]
    if image.shape[-1] == 3 and channels == 1:
      image = tf.image.rgb_to_grayscale(image)
    elif image.shape[-1] == 1 and channels == 3:
      image = tf.image.grayscale_to_rgb(image)
    if tuple(image.shape[:2]) != (height, width):
      image = tf.image.resize(image, (height, width), antialias=True)
    images.append(tf.clip_by_value(image, 0.0, 1.0).numpy())
  return np.stack(images).astype(np.float32)


# ----------------------------------------------------------------------------
# tf.data pipelines.


def to_float_image(image: tf.Tensor) -> tf.Tensor:
  """uint8 pixels in [0, 255] -> float32 in [0, 1], any shape."""
  return tf.cast(image, tf.float32) / 255.0


def pad_crop_flip(image: tf.Tensor, seed: tf.Tensor, pad: int = 4) -> tf.Tensor:
  """The usual CIFAR augmentation, stateless so it can be replayed.

  Args:
    image: float32 `[H, W, C]` in [0, 1].
    seed: int `[2]` stateless seed.
    pad: zero padding on each side before the random crop.

  Returns:
    float32 `[H, W, C]` in [0, 1]: a random crop of the padded image,
    flipped left-right with probability 1/2.
  """
  crop_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=2))
  shape = tf.shape(image)
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  cropped = tf.image.stateless_random_crop(padded, shape, seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per epoch (the last partial batch is dropped)."""
  steps = num_examples // global_batch_size
  if steps < 1:
    raise DataError(
        f'{num_examples} training examples give no full batch of '
        f'{global_batch_size}; lower --batch_size or raise --train_examples.')
  return steps


def train_dataset_fn(
    images: np.ndarray, labels: np.ndarray, *, global_batch_size: int,
    epoch: int, seed: int, augment: bool, start_step: int = 0,
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
  """Builds the input function of one training epoch for a strategy.

  The epoch's order is a permutation of all examples seeded by
  `(seed, epoch)`; input pipeline i of P takes every P-th index of it, so
  workers see disjoint shards. Each pipeline yields per-replica batches
  (`drop_remainder=True`) and skips the `start_step` steps already done.

  Args:
    images: uint8 `[N, H, W, C]`.
    labels: int64 `[N]`.
    global_batch_size: examples per step over all replicas; must divide
      evenly among replicas.
    epoch: 0-based epoch number, part of the shuffle and augmentation seed.
    seed: experiment seed.
    augment: apply `pad_crop_flip`.
    start_step: steps of this epoch already taken (resume), >= 0.

  Returns:
    A function for `strategy.distribute_datasets_from_function` whose
    datasets yield (float32 `[b, H, W, C]` in [0, 1], int64 `[b]`).
  """
  n = len(images)
  total_steps = steps_per_epoch(n, global_batch_size)
  if not 0 <= start_step <= total_steps:
    raise ValueError(f'start_step={start_step} outside [0, {total_steps}].')

  def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
    per_replica = ctx.get_per_replica_batch_size(global_batch_size)
    per_pipeline_step = global_batch_size // ctx.num_input_pipelines
    images_t = tf.constant(images)
    labels_t = tf.constant(labels)
    order = tf.random.experimental.stateless_shuffle(
        tf.range(n, dtype=tf.int64), seed=[seed, epoch])
    ds = tf.data.Dataset.from_tensor_slices(order)
    ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
    ds = ds.take(total_steps * per_pipeline_step)
    ds = ds.skip(start_step * per_pipeline_step)

    def load(index):
      image = to_float_image(tf.gather(images_t, index))
      if augment:
        image = pad_crop_flip(image, tf.stack(
            [tf.constant(seed, tf.int64) * 1_000_003 + epoch, index]))
      return image, tf.gather(labels_t, index)

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(per_replica, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  return dataset_fn


def eval_dataset_fn(
    images: np.ndarray, labels: np.ndarray, global_batch_size: int,
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
  """Builds the evaluation input function: every example once, in order.

  The split is padded with zero-weight blank examples to a whole number of
  global batches, so every replica always gets a full batch (a replica left
  with an empty final batch breaks some strategies) and the weights say
  which examples count.

  Args:
    images: uint8 `[N, H, W, C]`.
    labels: int64 `[N]`.
    global_batch_size: examples per step over all replicas.

  Returns:
    A function for `strategy.distribute_datasets_from_function` whose
    datasets yield (float32 images `[b, H, W, C]` in [0, 1], int64 labels
    `[b]`, float32 weights `[b]` in {0, 1}).
  """
  pad = -len(images) % global_batch_size
  weights = np.concatenate([np.ones(len(images), np.float32),
                            np.zeros(pad, np.float32)])
  images = np.concatenate([images, np.zeros((pad,) + images.shape[1:],
                                            images.dtype)])
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])

  def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
    per_replica = ctx.get_per_replica_batch_size(global_batch_size)
    ds = tf.data.Dataset.from_tensor_slices((images, labels, weights))
    ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
    ds = ds.map(lambda x, y, w: (to_float_image(x), y, w),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(per_replica, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

  return dataset_fn


def as_batches(images: np.ndarray, labels: np.ndarray,
               batch_size: int) -> tf.data.Dataset:
  """A plain (undistributed) in-order float dataset, for tools and tests.

  Returns:
    Dataset of (float32 `[b, H, W, C]` in [0, 1], int64 `[b]`); the last
    batch may be smaller.
  """
  ds = tf.data.Dataset.from_tensor_slices((images, labels))
  return ds.map(lambda x, y: (to_float_image(x), y)).batch(batch_size)


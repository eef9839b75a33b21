"""Data loading and the tf.data pipelines."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_slwta import config as config_lib
from tf_slwta import data as data_lib


def write_idx(path, array):
  """Writes `array` (uint8) as a gzipped IDX file, as the format defines."""
  header = struct.pack('>HBB', 0, 0x08, array.ndim)
  header += struct.pack('>' + 'I' * array.ndim, *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_dir(tmp_path):
  """A folder with the four Fashion-MNIST files holding small known arrays."""
  rng = np.random.default_rng(0)
  arrays = {}
  for split, n in (('train', 12), ('test', 5)):
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    image_file, label_file = data_lib.FASHION_MNIST_FILES[split]
    write_idx(tmp_path / image_file, images)
    write_idx(tmp_path / label_file, labels)
    arrays[split] = (images, labels)
  return tmp_path, arrays


def test_read_idx_round_trip(fashion_dir):
  folder, arrays = fashion_dir
  images = data_lib.read_idx(str(folder / 'train-images-idx3-ubyte.gz'))
  np.testing.assert_array_equal(images, arrays['train'][0])
  labels = data_lib.read_idx(str(folder / 'train-labels-idx1-ubyte.gz'))
  np.testing.assert_array_equal(labels, arrays['train'][1])


def test_load_fashion_mnist_from_data_dir(fashion_dir):
  folder, arrays = fashion_dir
  images, labels = data_lib.load_fashion_mnist('test', str(folder), download=False)
  assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
  assert labels.dtype == np.int64
  np.testing.assert_array_equal(images[..., 0], arrays['test'][0])
  np.testing.assert_array_equal(labels, arrays['test'][1])


def test_truncated_file_names_path(fashion_dir):
  folder, _ = fashion_dir
  path = folder / 'train-images-idx3-ubyte.gz'
  raw = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(raw[:-100]))
  with pytest.raises(data_lib.DataError, match='truncated or corrupt') as err:
    data_lib.load_fashion_mnist('train', str(folder), download=False)
  assert str(path) in str(err.value)


def test_not_gzip_names_path_and_fix(fashion_dir):
  folder, _ = fashion_dir
  path = folder / 't10k-labels-idx1-ubyte.gz'
  path.write_bytes(b'<html>this is an error page, not data</html>')
  with pytest.raises(data_lib.DataError) as err:
    data_lib.load_fashion_mnist('test', str(folder), download=False)
  assert str(path) in str(err.value)
  assert 'apt-get install dataset-fashion-mnist' in str(err.value)


def test_wrong_magic_is_refused(tmp_path):
  path = tmp_path / 'x.gz'
  with gzip.open(path, 'wb') as f:
    f.write(struct.pack('>HBB', 0, 0x0D, 1) + struct.pack('>I', 1) + b'\0' * 4)
  with pytest.raises(data_lib.DataError, match='not an unsigned-byte IDX'):
    data_lib.read_idx(str(path))


def test_missing_data_without_download_says_how_to_get_it(tmp_path,
                                                         monkeypatch):
  monkeypatch.setattr(data_lib, 'DEBIAN_FASHION_MNIST_DIR',
                      str(tmp_path / 'nowhere'))
  with pytest.raises(data_lib.DataError) as err:
    data_lib.load_fashion_mnist('train', str(tmp_path), download=False)
  message = str(err.value)
  assert str(tmp_path) in message and '--data_dir' in message
  assert 'dataset-fashion-mnist' in message


def test_missing_data_dir_is_named(tmp_path):
  with pytest.raises(data_lib.DataError, match='is not a folder'):
    data_lib.load_fashion_mnist('train', str(tmp_path / 'absent'))


@pytest.mark.skipif(
    not os.path.exists(os.path.join(data_lib.DEBIAN_FASHION_MNIST_DIR,
                                    'train-images-idx3-ubyte.gz')),
    reason='Debian package dataset-fashion-mnist is not installed')
def test_debian_fashion_mnist():
  images, labels = data_lib.load_fashion_mnist('test', download=False)
  assert images.shape == (10000, 28, 28, 1)
  assert np.bincount(labels).tolist() == [1000] * 10


@pytest.mark.parametrize('name,shape', [('mnist', (28, 28, 1)),
                                        ('cifar10', (32, 32, 3))])
def test_tfds_path_with_mock_data(name, shape, tmp_path):
  cfg = config_lib.DataConfig(dataset=name, tfds_data_dir=str(tmp_path),
                              train_examples=7)
  with tfds.testing.mock_data(num_examples=20):
    train_images, train_labels = data_lib.load_arrays(cfg, 'train')
    test_images, test_labels = data_lib.load_arrays(cfg, 'test')
  assert train_images.shape == (7,) + shape and train_images.dtype == np.uint8
  assert train_labels.shape == (7,) and train_labels.dtype == np.int64
  assert test_images.shape == (20,) + shape
  assert 0 <= test_labels.min() and test_labels.max() < 10


def test_tfds_failure_is_explained(tmp_path):
  cfg = config_lib.DataConfig(dataset='cifar10', tfds_data_dir=str(tmp_path),
                              download=False)
  with pytest.raises(data_lib.DataError, match='--tfds_data_dir'):
    data_lib.load_arrays(cfg, 'test')


def _epoch(images, labels, strategy=None, **kwargs):
  strategy = strategy or tf.distribute.get_strategy()
  fn = data_lib.train_dataset_fn(images, labels, **kwargs)
  batches = []
  for x, y in strategy.distribute_datasets_from_function(fn):
    xs = strategy.experimental_local_results(x)
    ys = strategy.experimental_local_results(y)
    batches.append((np.concatenate([v.numpy() for v in xs]),
                    np.concatenate([v.numpy() for v in ys])))
  return batches


@pytest.fixture
def small_arrays():
  return data_lib.make_synthetic('train', 70)


def test_train_pipeline_batches_floats_in_unit_range(small_arrays):
  images, labels = small_arrays
  batches = _epoch(images, labels, global_batch_size=16, epoch=0, seed=3,
                   augment=True)
  assert len(batches) == 70 // 16
  for x, y in batches:
    assert x.shape == (16, 28, 28, 1) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and y.shape == (16,)


def test_train_pipeline_is_a_permutation_seeded_by_epoch(small_arrays):
  images, labels = small_arrays
  ids = np.arange(70, dtype=np.int64)  # Labels carry example ids here.
  epoch0 = _epoch(images, ids, global_batch_size=10, epoch=0, seed=3,
                  augment=False)
  again = _epoch(images, ids, global_batch_size=10, epoch=0, seed=3,
                 augment=False)
  epoch1 = _epoch(images, ids, global_batch_size=10, epoch=1, seed=3,
                  augment=False)
  order0 = np.concatenate([y for _, y in epoch0])
  assert sorted(order0.tolist()) == list(range(70))
  np.testing.assert_array_equal(order0, np.concatenate([y for _, y in again]))
  assert not np.array_equal(order0, np.concatenate([y for _, y in epoch1]))
  for x, y in epoch0:  # Images travel with their labels.
    np.testing.assert_allclose(x, images[y] / 255.0, atol=1e-7)


def test_resume_skips_exactly_the_steps_taken(small_arrays):
  images, labels = small_arrays
  kwargs = dict(global_batch_size=8, epoch=2, seed=5, augment=True)
  full = _epoch(images, labels, **kwargs)
  resumed = _epoch(images, labels, start_step=3, **kwargs)
  assert len(resumed) == len(full) - 3
  for (xa, ya), (xb, yb) in zip(full[3:], resumed):
    np.testing.assert_array_equal(xa, xb)  # Augmentation replays too.
    np.testing.assert_array_equal(ya, yb)


def test_two_replicas_see_the_same_global_batches(small_arrays):
  images, _ = small_arrays
  ids = np.arange(70, dtype=np.int64)
  kwargs = dict(global_batch_size=10, epoch=0, seed=1, augment=False)
  one = _epoch(images, ids, **kwargs)
  two = _epoch(images, ids, tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']),
               **kwargs)
  for (_, ya), (_, yb) in zip(one, two):
    np.testing.assert_array_equal(np.sort(ya), np.sort(yb))


def test_input_pipelines_get_disjoint_shards(small_arrays):
  images, _ = small_arrays
  ids = np.arange(70, dtype=np.int64)
  fn = data_lib.train_dataset_fn(images, ids, global_batch_size=10, epoch=0,
                                 seed=1, augment=False)
  seen = []
  for pipeline in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2,
                                     input_pipeline_id=pipeline,
                                     num_replicas_in_sync=2)
    seen.append(np.concatenate([y.numpy() for _, y in fn(ctx)]))
  assert len(seen[0]) == len(seen[1]) == 7 * 5
  assert not set(seen[0]) & set(seen[1])


def test_pad_crop_flip_is_replayable_and_moves_pixels():
  image = tf.random.stateless_uniform([32, 32, 3], seed=[0, 1])
  seed = tf.constant([7, 9], tf.int64)
  a = data_lib.pad_crop_flip(image, seed)
  np.testing.assert_array_equal(a, data_lib.pad_crop_flip(image, seed))
  assert a.shape == (32, 32, 3)
  outputs = [data_lib.pad_crop_flip(image, tf.constant([7, i], tf.int64))
             for i in range(8)]
  assert any(not np.array_equal(o, image) for o in outputs)


def test_steps_per_epoch_refuses_too_small_a_set():
  with pytest.raises(data_lib.DataError, match='--batch_size'):
    data_lib.steps_per_epoch(10, 16)


def test_eval_pipeline_keeps_every_example(small_arrays):
  images, labels = small_arrays
  ys = np.concatenate([y.numpy() for _, y in data_lib.as_batches(images, labels, 32)])
  np.testing.assert_array_equal(ys, labels)


def test_image_files_of_every_format_become_model_input(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rgb = np.random.RandomState(0).randint(0, 256, (40, 30, 3)).astype(np.uint8)
  grey = rgb[..., 0]
  files = {'rgb.bmp': rgb, 'rgb.gif': rgb, 'grey.bmp': grey, 'grey.gif': grey,
           'rgba.png': np.dstack([rgb, grey]), 'rgb.jpg': rgb,
           'grey_alpha.png': np.dstack([grey, grey])}
  paths = []
  for name, pixels in files.items():
    Image.fromarray(pixels).save(tmp_path / name)
    paths.append(str(tmp_path / name))
  for shape in ((28, 28, 1), (32, 32, 3)):
    images = data_lib.load_image_files(paths, shape)
    assert images.shape == (len(paths), *shape) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
  # A grey file keeps its pixels when the model takes grey images.
  same = data_lib.load_image_files([str(tmp_path / 'grey.bmp')], (40, 30, 1))
  np.testing.assert_allclose(same[0, ..., 0], grey / 255.0, atol=1e-6)
  (tmp_path / 'bad.png').write_text('not an image')
  with pytest.raises(data_lib.DataError, match='bad.png.*Unknown image'):
    data_lib.load_image_files([str(tmp_path / 'bad.png')], (28, 28, 1))
  with pytest.raises(data_lib.DataError, match='--images'):
    data_lib.load_image_files([], (28, 28, 1))

"""Export a trained model as a SavedModel that TensorFlow Serving loads.

Layout (what TF Serving watches; every version is a new integer folder):

  <export_dir>/
    models.config            ModelServerConfig for the Docker image (/models/...)
    models.local.config      the same with this machine's absolute paths
    <name>/<version>/
      saved_model.pb, variables/, fingerprint.pb
      assets.extra/tf_serving_warmup_requests   PredictionLog records
      assets.extra/tf_slwta.json                what was exported, and how

Signatures (input key `images`: float32 `[batch, H, W, C]`, pixels in [0, 1]):
  * `serving_default` -> `probabilities` float32 `[batch, K]` (the softmax
    averaged over `mc_samples` stochastic passes, the decision rule used when
    attacking and scoring) and `classes` int64 `[batch]` (its argmax);
  * `logits` -> `logits` float32 `[batch, K]`, one pass.

The input's shape is left unknown in the signature so that every bad input
reaches the graph, where it is checked: a wrong rank or image size, an
empty batch, NaN or infinite values, and pixels outside [0, 1] each fail with an
InvalidArgumentError (TF Serving: INVALID_ARGUMENT) whose message names the
problem and the fix. The graph must hold only core TensorFlow ops (no
Python): `core_op_problems` checks, and export refuses a graph that fails.

Stochastic models (LWTA sampling, noise injection) draw fresh randomness on
every request. Layers that share one draw across a batch (PNI on kernels) or
scale their noise by a batch statistic (PNI on activations) would make one
example's answer depend on the others in its request, or in TF Serving's
server-side batch; such models are run one example at a time, so each
example is sampled independently. LWTA draws per element and runs batched.
"""

import dataclasses
import datetime
import json
import os
import uuid
from typing import Dict, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_slwta import config as config_lib
from tf_slwta.attacks import eot
from tf_slwta.export.client import INPUT_KEY
from tf_slwta.export.client import SERVING_SIGNATURE
from tf_slwta.export.client import SIGNATURE_OUTPUTS
from tf_slwta.layers import lwta
from tf_slwta.layers import noise

LOGITS_SIGNATURE = 'logits'
WARMUP_FILE = os.path.join('assets.extra', 'tf_serving_warmup_requests')
INFO_FILE = os.path.join('assets.extra', 'tf_slwta.json')
MODELS_CONFIG = 'models.config'
LOCAL_MODELS_CONFIG = 'models.local.config'
DOCKER_MODELS_DIR = '/models'
# Ops that call back into Python: TF Serving cannot run them.
PYTHON_OPS = frozenset({'PyFunc', 'PyFuncStateless', 'EagerPyFunc'})


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the served graph turns stochastic passes into probabilities.

  Attributes:
    mode: 'deterministic' (one pass: the model has no randomness at test),
      'batched' (passes over the whole batch; every random draw is per
      element, so examples are independent), or 'per_example' (each example
      run alone, for layers whose draw is shared across a batch).
    passes: forward passes averaged per example, >= 1.
  """
  mode: str
  passes: int


# What each mode means for a user comparing served answers with robustness.md.
SAMPLING_NOTES = {
    'deterministic': 'no randomness at test: one pass, as in evaluation',
    'batched': ('passes over the whole request; each example draws its own '
                'noise wherever the layers draw per element (LWTA)'),
    'per_example': (
        'each example is run alone, so it draws its own PNI noise (and its '
        'activation-noise scale comes from that example only); evaluation '
        '(robustness.md) draws PNI noise once per batch, so served answers '
        'are independent samples of the same model, not the same draws'),
}


def sampling_for(model: keras.Model, mc_samples: int,
                 mode: str = 'auto') -> Sampling:
  """Chooses how to sample `model` so each example is drawn independently.

  Args:
    model: the Keras model to serve.
    mc_samples: passes averaged per example for a stochastic model, >= 1.
    mode: one of `config.EXPORT_SAMPLING`. 'auto' runs one example at a
      time only when a layer shares its draw across a batch; 'batched' forces
      batched passes (faster, but such draws are then shared by the examples of a
      request); 'per_example' forces one example at a time.

  Returns:
    A `Sampling`; a model with no randomness at test gets one pass, whatever
    `mode` says.
  """
  if mc_samples < 1:
    raise ValueError(f'mc_samples must be >= 1, got {mc_samples}.')
  if mode not in config_lib.EXPORT_SAMPLING:
    raise ValueError(f'sampling mode {mode!r} is not one of '
                     f'{", ".join(config_lib.EXPORT_SAMPLING)}.')
  # PNI draws one kernel noise per call, or scales activation noise by a
  # statistic of the whole batch; LWTA draws per element.
  shared = bool(noise.batch_shared_layers(model))
  per_element = any(not layer.deterministic
                    for layer in lwta.lwta_layers(model))
  if not (shared or per_element):
    return Sampling('deterministic', 1)
  if mode == 'auto':
    mode = 'per_example' if shared else 'batched'
  return Sampling(mode, mc_samples)


def checked_images(images: tf.Tensor,
                   image_shape: Tuple[int, int, int]) -> tf.Tensor:
  """Validates a request's images inside the graph.

  Args:
    images: float32 tensor of any shape, as it came in.
    image_shape: the (H, W, C) the model takes.

  Returns:
    `images` as float32 `[batch, H, W, C]`, only after every check passed.

  Raises (when the graph runs):
    tf.errors.InvalidArgumentError: wrong rank or image size, no image, NaN or
      infinite values, or pixels outside [0, 1]; the message says which.
  """
  height, width, channels = image_shape
  expected = f'[batch, {height}, {width}, {channels}]'
  shape = tf.shape(images)
  # Padded so that the comparisons have entries whatever the rank.
  padded = tf.pad(shape, [[0, 4]])
  shape_ok = tf.logical_and(
      tf.logical_and(tf.equal(tf.size(shape), 4), padded[0] >= 1),
      tf.reduce_all(tf.equal(padded[1:4], tf.constant(image_shape, tf.int32))))
  check_shape = tf.debugging.Assert(
      shape_ok,
      [f'images must be float32 {expected} (batch >= 1) with pixels in '
       '[0, 1]; got shape', shape], summarize=8, name='check_shape')
  with tf.control_dependencies([check_shape]):
    check_finite = tf.debugging.Assert(
        tf.reduce_all(tf.math.is_finite(images)),
        ['images contain NaN or infinite values; send pixels in [0, 1]'],
        name='check_finite')
  with tf.control_dependencies([check_finite]):
    low, high = tf.reduce_min(images), tf.reduce_max(images)
    check_range = tf.debugging.Assert(
        tf.logical_and(low >= 0.0, high <= 1.0),
        ['pixel values must be in [0, 1] (divide 8-bit pixels by 255); got '
         'min', low, 'max', high], name='check_range')
  with tf.control_dependencies([check_range]):
    return tf.reshape(images, (-1, height, width, channels))


def serving_functions(model: keras.Model, image_shape: Tuple[int, int, int],
                      sampling: Sampling):
  """The two signature functions, as plain Python functions of `images`.

  Args:
    model: Keras model, images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    image_shape: (H, W, C).
    sampling: from `sampling_for`.

  Returns:
    (serve(images) -> {'probabilities' float32 `[B, K]`, 'classes' int64
    `[B]`}, logits(images) -> {'logits' float32 `[B, K]`}); both draw each
    example independently under 'per_example' sampling.
  """
  num_classes = model.output_shape[-1]

  def logits_fn(x):
    return model(x, training=False)

  def each_example(fn, x):
    """fn on the batch, or on one example at a time if draws are shared."""
    if sampling.mode != 'per_example':
      return fn(x)
    return tf.map_fn(lambda one: fn(one[tf.newaxis])[0], x,
                     fn_output_signature=tf.TensorSpec([num_classes],
                                                       tf.float32))

  def serve(images):
    probabilities = each_example(
        lambda x: eot.mean_probabilities(logits_fn, x, sampling.passes),
        checked_images(images, image_shape))
    return {'probabilities': probabilities,
            'classes': tf.argmax(probabilities, axis=-1)}

  def logits(images):
    return {'logits': each_example(logits_fn,
                                   checked_images(images, image_shape))}

  return serve, logits


def next_version(model_dir: str) -> int:
  """One more than the newest integer version folder in `model_dir`, or 1.

  Every integer folder counts, finished or not, so a folder left by an
  interrupted copy is never chosen again.
  """
  return max((int(e) for e in _entries(model_dir) if e.isdigit()),
             default=0) + 1


def _entries(folder: str) -> Sequence[str]:
  """Names in `folder` (gfile lists sub-folders with a trailing '/')."""
  if not tf.io.gfile.isdir(folder):
    return []
  return [entry.rstrip('/') for entry in tf.io.gfile.listdir(folder)]


def existing_versions(model_dir: str) -> Sequence[int]:
  """Integer version folders of `model_dir` that hold a saved_model.pb."""
  return sorted(int(entry) for entry in _entries(model_dir)
                if entry.isdigit() and tf.io.gfile.exists(
                    os.path.join(model_dir, entry, 'saved_model.pb')))


def warmup_records(model_name: str, image_shape: Tuple[int, int, int],
                   batch_sizes: Sequence[int]) -> Sequence[bytes]:
  """Serialized `PredictionLog` warm-up requests for both signatures.

  Args:
    model_name: the served name.
    image_shape: (H, W, C).
    batch_sizes: one `serving_default` request per size (mid-gray images),
      then one `logits` request of the first size.

  Returns:
    The records, as TF Serving reads them from
    `assets.extra/tf_serving_warmup_requests`.
  """
  # Imported here: only export needs the TF Serving protos.
  from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top

  requests = [(SERVING_SIGNATURE, size) for size in batch_sizes]
  requests.append((LOGITS_SIGNATURE, batch_sizes[0]))
  records = []
  for signature, size in requests:
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
        name=model_name, signature_name=signature))
    request.inputs[INPUT_KEY].CopyFrom(tf.make_tensor_proto(
        np.full((size, *image_shape), 0.5, np.float32)))
    log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request))
    records.append(log.SerializeToString())
  return records


def export_model(model: keras.Model, *, export_dir: str, name: str,
                 image_shape: Tuple[int, int, int], mc_samples: int = 1,
                 version: int = 0, warmup_batch_sizes: Sequence[int] = (1, 8),
                 info: Optional[Dict[str, object]] = None,
                 sampling_mode: str = 'auto') -> str:
  """Writes `<export_dir>/<name>/<version>/` and refreshes models.config.

  The SavedModel is written to a hidden folder next to its final place and
  renamed into it, so a TF Serving that watches `export_dir` never loads a
  half-written version.

  Args:
    model: Keras model, images `[B, H, W, C]` in [0, 1] -> logits `[B, K]`.
    export_dir: the folder TF Serving serves.
    name: the model's served name (see `config.check_model_name`).
    image_shape: (H, W, C) the model takes.
    mc_samples: passes averaged per example if the model is stochastic.
    version: >= 1 to choose it, 0 for the next one.
    warmup_batch_sizes: batch sizes of the warm-up requests.
    info: extra facts recorded in `assets.extra/tf_slwta.json` (data set,
      class names, checkpoint, settings).
    sampling_mode: see `sampling_for`; 'auto' is the safe choice.

  Returns:
    The path of the new version folder.

  Raises:
    FileExistsError: that version exists already (versions are never
      overwritten).
    ValueError: the graph holds an op TF Serving cannot run (nothing is
      left behind).
  """
  if tf.io.gfile.exists(export_dir) and not tf.io.gfile.isdir(export_dir):
    raise FileExistsError(f'--export_dir={export_dir} is a file, not a '
                          f'folder; pass a folder (it is made if missing).')
  model_dir = os.path.join(export_dir, name)
  for entry in _entries(model_dir):  # Empty version folders hold nothing.
    if entry.isdigit() and not _entries(os.path.join(model_dir, entry)):
      tf.io.gfile.rmtree(os.path.join(model_dir, entry))
  version = version or next_version(model_dir)
  final = os.path.join(model_dir, str(version))
  if tf.io.gfile.exists(final):
    raise FileExistsError(
        f'{final} exists and versions are never overwritten; pass '
        f'--export_version=0 to write the next one '
        f'({next_version(model_dir)}).')
  sampling = sampling_for(model, mc_samples, sampling_mode)
  serve, logits = serving_functions(model, image_shape, sampling)
  spec = tf.TensorSpec(None, tf.float32, name=INPUT_KEY)
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(SERVING_SIGNATURE, tf.function(serve),
                       input_signature=[spec])
  archive.add_endpoint(LOGITS_SIGNATURE, tf.function(logits),
                       input_signature=[spec])

  # TF Serving ignores folders whose names are not integers.
  staging = os.path.join(model_dir, f'.tmp-{version}-{uuid.uuid4().hex[:8]}')
  tf.io.gfile.makedirs(model_dir)
  try:
    archive.write_out(staging, verbose=False)
    problems = core_op_problems(staging)
    if problems:
      raise ValueError(f'{name} would not run in TF Serving: '
                       f'{"; ".join(problems)}. Replace those ops with core '
                       f'TensorFlow ops.')
    tf.io.gfile.makedirs(os.path.join(staging, 'assets.extra'))
    with tf.io.TFRecordWriter(os.path.join(staging, WARMUP_FILE)) as writer:
      for record in warmup_records(name, image_shape, warmup_batch_sizes):
        writer.write(record)
    facts = {
        'name': name, 'version': version,
        'exported_at': datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec='seconds'),
        'input': {'key': INPUT_KEY, 'dtype': 'float32',
                  'shape': [None, *image_shape], 'range': [0.0, 1.0]},
        'signatures': {k: list(v) for k, v in SIGNATURE_OUTPUTS.items()},
        'sampling': dataclasses.asdict(sampling),
        'sampling_note': SAMPLING_NOTES[sampling.mode],
        # TF Serving should be at least this new to know every op.
        'tensorflow_version': tf.__version__, 'ops': graph_ops(staging),
        **(info or {})}
    with tf.io.gfile.GFile(os.path.join(staging, INFO_FILE), 'w') as f:
      f.write(json.dumps(facts, indent=2, sort_keys=True) + '\n')
    tf.io.gfile.rename(staging, final, overwrite=False)
  finally:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)
  write_models_config(export_dir)
  return final


def write_models_config(export_dir: str) -> Dict[str, str]:
  """Writes the ModelServerConfig files listing every model in `export_dir`.

  `models.config` names each model's base path as the Docker image sees it
  (`/models/<name>`, with `export_dir` mounted at /models);
  `models.local.config` names this machine's absolute paths, for
  `tensorflow_model_server --model_config_file=...` run here. No version
  policy is written, so TF Serving serves each model's newest version.

  Args:
    export_dir: the folder holding `<name>/<version>/` exports.

  Returns:
    {'docker': path, 'local': path}.
  """
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=g-import-not-at-top

  names = sorted(entry for entry in _entries(export_dir)
                 if existing_versions(os.path.join(export_dir, entry)))
  paths = {}
  for kind, file_name, root in (
      ('docker', MODELS_CONFIG, DOCKER_MODELS_DIR),
      ('local', LOCAL_MODELS_CONFIG, os.path.abspath(export_dir))):
    server_config = model_server_config_pb2.ModelServerConfig()
    for name in names:
      server_config.model_config_list.config.add(
          name=name, base_path=f'{root}/{name}', model_platform='tensorflow')
    paths[kind] = os.path.join(export_dir, file_name)
    with tf.io.gfile.GFile(paths[kind], 'w') as f:
      f.write(f'# Every model exported to {export_dir}, written by tf_slwta '
              f'--mode=export.\n# Base paths as {kind} TF Serving sees them.\n')
      f.write(text_format.MessageToString(server_config))
  return paths


def graph_ops(saved_model_dir: str) -> Sequence[str]:
  """Sorted names of every op a SavedModel's graph and functions use.

  Reads saved_model.pb only; the model's Python code is not needed.
  """
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top

  saved = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(os.path.join(saved_model_dir, 'saved_model.pb'),
                         'rb') as f:
    saved.ParseFromString(f.read())
  ops, functions = set(), set()
  for meta_graph in saved.meta_graphs:
    graph = meta_graph.graph_def
    ops.update(node.op for node in graph.node)
    for function in graph.library.function:
      functions.add(function.signature.name)
      ops.update(node.op for node in function.node_def)
  # Calls of the graph's own functions are not ops.
  return sorted(ops - functions)


def core_op_problems(saved_model_dir: str) -> Sequence[str]:
  """Ops in a SavedModel that a TF Serving binary could not run.

  Lists every op, in the graph and in its function library, that calls back
  into Python or that the running TensorFlow does not register (a custom
  op library).

  Returns:
    Sorted problem descriptions; empty when the graph is servable.
  """
  from tensorflow.python.framework import op_def_registry  # pylint: disable=g-import-not-at-top

  problems = []
  for op in graph_ops(saved_model_dir):
    if op in PYTHON_OPS:
      problems.append(f'{op}: calls Python')
    elif op_def_registry.get(op) is None:
      problems.append(f'{op}: not a registered TensorFlow op')
  return problems

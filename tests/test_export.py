"""Export to TF Serving: layout, signatures, bad input, warm-up, clients."""

import dataclasses
import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving_standin import ServingStandIn
from tf_slwta import attacks
from tf_slwta import config as config_lib
from tf_slwta import data as data_lib
from tf_slwta import run_folder
from tf_slwta.export import client as client_lib
from tf_slwta.export import saved_model
from tf_slwta.training import loop
from tf_slwta.training import state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (28, 28, 1)
TINY = dict(seed_cnn_filters=(8, 16), seed_cnn_units=32)


def tiny_run(output_dir, learning_rate, **model):
  """A seconds-long run on synthetic data."""
  return config_lib.ExperimentConfig(
      output_dir=str(output_dir),
      data=config_lib.DataConfig(dataset='synthetic', train_examples=1024,
                                 eval_examples=256, batch_size=32,
                                 eval_batch_size=128),
      model=config_lib.ModelConfig(**TINY, **model),
      train=config_lib.TrainConfig(epochs=3, learning_rate=learning_rate,
                                   log_every_steps=16, strategy='one_device'))


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
  """Trained relu, LWTA and PNI models, and their exports."""
  root = tmp_path_factory.mktemp('export')
  export_dir = str(root / 'saved_models')
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  made = {}
  for name, learning_rate, model_settings, mc in (
      ('relu', 0.05, {}, 1), ('lwta', 0.01, {'activation': 'lwta'}, 4)):
    cfg = tiny_run(root / name, learning_rate, **model_settings)
    loop.train(cfg, strategy)
    model = state.restore_model(cfg, strategy)
    made[name] = dict(model=model, mc=mc, path=saved_model.export_model(
        model, export_dir=export_dir, name=name, image_shape=SHAPE,
        mc_samples=mc, info={'dataset': 'synthetic'}))
  pni_cfg = tiny_run(root / 'pni', 0.02, pni='weight')
  loop.train(pni_cfg, strategy)
  pni = state.restore_model(pni_cfg, strategy)
  made['pni'] = dict(model=pni, mc=3, path=saved_model.export_model(
      pni, export_dir=export_dir, name='pni', image_shape=SHAPE,
      mc_samples=3))
  images, labels = data_lib.make_synthetic('test', 256)
  made['test'] = (images.astype(np.float32) / 255.0, labels)
  made['export_dir'] = export_dir
  return made


def test_layout_is_what_tf_serving_watches(exports):
  for name in ('relu', 'lwta', 'pni'):
    path = exports[name]['path']
    assert path == os.path.join(exports['export_dir'], name, '1')
    for part in ('saved_model.pb', 'variables/variables.index',
                 'assets.extra/tf_serving_warmup_requests',
                 'assets.extra/tf_slwta.json'):
      assert os.path.exists(os.path.join(path, part)), part
    # No half-written staging folder is left for TF Serving to trip on.
    assert os.listdir(os.path.dirname(path)) == ['1']
  with open(os.path.join(exports['lwta']['path'], saved_model.INFO_FILE)) as f:
    info = json.load(f)
  assert info['sampling'] == {'mode': 'batched', 'passes': 4}
  assert info['input']['shape'] == [None, 28, 28, 1]


def test_sampling_follows_the_layers(exports):
  assert saved_model.sampling_for(exports['relu']['model'], 10) == (
      saved_model.Sampling('deterministic', 1))
  assert saved_model.sampling_for(exports['lwta']['model'], 4) == (
      saved_model.Sampling('batched', 4))
  assert saved_model.sampling_for(exports['pni']['model'], 3) == (
      saved_model.Sampling('per_example', 3))
  # A choice for speed, never passes for a model without randomness.
  assert saved_model.sampling_for(exports['pni']['model'], 3, 'batched') == (
      saved_model.Sampling('batched', 3))
  assert saved_model.sampling_for(exports['relu']['model'], 3, 'batched') == (
      saved_model.Sampling('deterministic', 1))
  with pytest.raises(ValueError, match='sampling mode'):
    saved_model.sampling_for(exports['relu']['model'], 3, 'sometimes')


def test_versions_are_new_integers_and_never_overwritten(exports, tmp_path):
  model = exports['relu']['model']
  export_dir = str(tmp_path)
  first = saved_model.export_model(model, export_dir=export_dir, name='m',
                                   image_shape=SHAPE)
  digest = hashlib.sha256(open(os.path.join(first, 'saved_model.pb'),
                               'rb').read()).hexdigest()
  second = saved_model.export_model(model, export_dir=export_dir, name='m',
                                    image_shape=SHAPE)
  assert [os.path.basename(p) for p in (first, second)] == ['1', '2']
  with pytest.raises(FileExistsError, match='never overwritten'):
    saved_model.export_model(model, export_dir=export_dir, name='m',
                             image_shape=SHAPE, version=1)
  assert hashlib.sha256(open(os.path.join(first, 'saved_model.pb'),
                             'rb').read()).hexdigest() == digest
  chosen = saved_model.export_model(model, export_dir=export_dir, name='m',
                                    image_shape=SHAPE, version=7)
  assert os.path.basename(chosen) == '7'
  assert saved_model.next_version(os.path.join(export_dir, 'm')) == 8
  saved_model.export_model(model, export_dir=export_dir, name='other',
                           image_shape=SHAPE)
  for file_name, root in ((saved_model.MODELS_CONFIG, '/models'),
                          (saved_model.LOCAL_MODELS_CONFIG, export_dir)):
    with open(os.path.join(export_dir, file_name)) as f:
      parsed = text_format.Parse(f.read(),
                                 model_server_config_pb2.ModelServerConfig())
    assert [(c.name, c.base_path, c.model_platform)
            for c in parsed.model_config_list.config] == [
                ('m', f'{root}/m', 'tensorflow'),
                ('other', f'{root}/other', 'tensorflow')]


def test_a_left_over_version_folder_never_blocks_an_export(exports, tmp_path):
  model = exports['relu']['model']
  export_dir = tmp_path / 'exports'
  (export_dir / 'm' / '1').mkdir(parents=True)  # Empty: holds nothing.
  (export_dir / 'm' / '2').mkdir()  # Half copied: never reused.
  (export_dir / 'm' / '2' / 'variables').mkdir()
  path = saved_model.export_model(model, export_dir=str(export_dir), name='m',
                                  image_shape=SHAPE)
  assert os.path.basename(path) == '3'
  assert not (export_dir / 'm' / '1').exists()
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(FileExistsError, match='--export_dir=.* is a file'):
    saved_model.export_model(model, export_dir=str(tmp_path / 'a_file'),
                             name='m', image_shape=SHAPE)


@pytest.mark.parametrize('folder,suggested', [
    ('my run', 'my_run'), ('modèle', 'modele'), ('модель', 'model'),
    ('50% off?', '50_off')])
def test_a_folder_name_rest_cannot_serve_gets_the_export_name_to_pass(
    folder, suggested):
  with pytest.raises(ValueError) as error:
    config_lib.ExportConfig().model_name(f'/runs/{folder}/')
  message = str(error.value)
  assert f"named {folder!r} after --output_dir" in message
  assert f'pass --export_name={suggested} to --mode=export' in message
  config_lib.check_model_name(suggested)  # What it suggests is usable.
  assert config_lib.ExportConfig(name=suggested).model_name(
      f'/runs/{folder}') == suggested


def test_an_export_folder_with_spaces_and_accents_is_served(exports, tmp_path):
  """Paths may hold any character: SavedModel and models.config take them."""
  export_dir = str(tmp_path / 'saved models é')
  path = saved_model.export_model(exports['relu']['model'],
                                  export_dir=export_dir, name='my_run',
                                  image_shape=SHAPE)
  assert path == os.path.join(export_dir, 'my_run', '1')
  with open(os.path.join(export_dir, saved_model.LOCAL_MODELS_CONFIG),
            encoding='utf-8') as f:
    parsed = text_format.Parse(f.read(),
                               model_server_config_pb2.ModelServerConfig())
  assert [c.base_path for c in parsed.model_config_list.config] == [
      f'{export_dir}/my_run']
  images = exports['test'][0][:2]
  with ServingStandIn({'my_run': parsed.model_config_list.config[0].base_path
                       }) as standin:
    outputs = client_lib.RestClient(standin.rest_address, 'my_run').predict(
        images)
  assert outputs['classes'].shape == (2,)


# Runs in a fresh interpreter that imports TensorFlow only, as a server would.
_LOAD_ELSEWHERE = r'''
import json, sys
import numpy as np
import tensorflow as tf
path, images_file = sys.argv[1:3]
data = np.load(images_file)
loaded = tf.saved_model.load(path)
serve = loaded.signatures['serving_default']
logits = loaded.signatures['logits']
out = {k: v.numpy() for k, v in serve(images=tf.constant(data['images'])).items()}
assert 'tf_slwta' not in sys.modules and not any(
    m.startswith('tf_slwta') for m in sys.modules)
print(json.dumps({
    'sums': out['probabilities'].sum(axis=1).tolist(),
    'classes': out['classes'].tolist(),
    'argmax_agrees': bool(np.all(out['probabilities'].argmax(1) == out['classes'])),
    'accuracy': float(np.mean(out['classes'] == data['labels'])),
    'logits': logits(images=tf.constant(data['images'][:8]))['logits'].numpy().tolist(),
}))
'''


@pytest.mark.slow
@pytest.mark.parametrize('name', ['relu', 'lwta', 'pni'])
def test_another_process_loads_it_and_gets_the_same_accuracy(
    exports, tmp_path, name):
  images, labels = exports['test']
  made = exports[name]
  np.savez(tmp_path / 'data.npz', images=images, labels=labels)
  result = subprocess.run(
      [sys.executable, '-c', _LOAD_ELSEWHERE, made['path'],
       str(tmp_path / 'data.npz')], capture_output=True, text=True,
      timeout=300, cwd=str(tmp_path),
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONPATH': ''})
  assert result.returncode == 0, result.stderr[-3000:]
  served = json.loads(result.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(served['sums'], 1.0, atol=1e-5)
  assert served['argmax_agrees']
  logits_fn = lambda x: made['model'](x, training=False)
  here = attacks.predict(logits_fn, tf.constant(images), made['mc']).numpy()
  here_accuracy = float(np.mean(here == labels))
  assert here_accuracy > 0.5  # The model learned: the comparison means something.
  if name == 'relu':  # Deterministic: the same numbers.
    assert served['classes'] == here.tolist()
    np.testing.assert_allclose(served['logits'],
                               logits_fn(images[:8]).numpy(), atol=1e-4)
  else:  # Independent Monte Carlo draws: the same accuracy within noise.
    # (In-process PNI shares one kernel draw per pass over the whole batch,
    # served PNI draws per example: same model, other draws.)
    assert abs(served['accuracy'] - here_accuracy) <= 0.06, (
        served['accuracy'], here_accuracy)


def test_saved_model_cli_lists_the_documented_signatures(exports):
  cli = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  result = subprocess.run([cli, 'show', '--all', '--dir',
                           exports['lwta']['path']], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert result.returncode == 0, result.stderr[-2000:]
  text = result.stdout
  serving = text[text.index("signature_def['serving_default']"):]
  serving = serving[:serving.index('Method name is')]
  for key in ("inputs['images']", "outputs['probabilities']",
              "outputs['classes']", 'DT_FLOAT', 'DT_INT64'):
    assert key in serving
  logits = text[text.index("signature_def['logits']"):]
  assert "inputs['images']" in logits and "outputs['logits']" in logits
  assert text.count('Method name is: tensorflow/serving/predict') == 2


def test_graph_holds_only_core_ops(exports, tmp_path):
  for name in ('relu', 'lwta', 'pni'):
    assert saved_model.core_op_problems(exports[name]['path']) == []
  with open(os.path.join(exports['lwta']['path'], saved_model.INFO_FILE)) as f:
    info = json.load(f)
  assert {'Assert', 'StatelessRandomUniformV2'} <= set(info['ops'])
  assert info['tensorflow_version'] == tf.__version__
  # A graph that calls Python is refused, and nothing is left behind.
  inputs = keras.Input(SHAPE)
  flat = keras.layers.Flatten()(inputs)
  called = keras.layers.Lambda(lambda t: tf.ensure_shape(
      tf.py_function(lambda v: v * 2, [t], tf.float32), [None, 784]))(flat)
  model = keras.Model(inputs, keras.layers.Dense(10)(called))
  with pytest.raises(ValueError, match='calls Python'):
    saved_model.export_model(model, export_dir=str(tmp_path), name='py',
                             image_shape=SHAPE)
  assert os.listdir(tmp_path / 'py') == []


def test_warmup_file_holds_prediction_logs_that_run(exports):
  path = exports['lwta']['path']
  loaded = tf.saved_model.load(path)
  records = list(tf.data.TFRecordDataset(
      os.path.join(path, saved_model.WARMUP_FILE)))
  assert len(records) == 3
  seen = []
  for record in records:
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    assert request.model_spec.name == 'lwta'
    images = tf.make_ndarray(request.inputs['images'])
    assert images.dtype == np.float32 and images.shape[1:] == SHAPE
    outputs = loaded.signatures[request.model_spec.signature_name](
        images=tf.constant(images))
    seen.append((request.model_spec.signature_name, len(images),
                 sorted(outputs)))
  assert seen == [('serving_default', 1, ['classes', 'probabilities']),
                  ('serving_default', 8, ['classes', 'probabilities']),
                  ('logits', 1, ['logits'])]


_GOOD = np.full((2, *SHAPE), 0.5, np.float32)
BAD_INPUTS = {
    'rank 3': (_GOOD[0], 'got shape'),
    'rank 5': (_GOOD[..., None], 'got shape'),
    'image size': (_GOOD[:, :27], 'got shape'),
    'channels': (np.repeat(_GOOD, 3, axis=-1), 'got shape'),
    'empty batch': (_GOOD[:0], 'batch >= 1'),
    'NaN': (np.where(np.arange(784).reshape(SHAPE) == 5, np.nan, _GOOD),
            'NaN'),
    'infinity': (np.full_like(_GOOD, np.inf), 'NaN or infinite'),
    '0..255 pixels': (_GOOD * 255, 'divide 8-bit pixels by 255'),
    'negative': (_GOOD - 1, 'must be in \\[0, 1\\]'),
}


@pytest.mark.parametrize('what', list(BAD_INPUTS))
def test_bad_input_is_an_invalid_argument_with_a_message(exports, what):
  loaded = tf.saved_model.load(exports['pni']['path'])
  images, message = BAD_INPUTS[what]
  for signature in ('serving_default', 'logits'):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      loaded.signatures[signature](images=tf.constant(images, tf.float32))


def test_each_example_is_sampled_independently(exports):
  """Identical images in one request get their own draws (or none)."""
  same = np.repeat(exports['test'][0][:1], 6, axis=0)
  for name, differ in (('relu', False), ('lwta', True), ('pni', True)):
    loaded = tf.saved_model.load(exports[name]['path'])
    logits = loaded.signatures['logits'](images=tf.constant(same))['logits']
    distinct = len(np.unique(np.round(logits.numpy(), 5), axis=0))
    assert distinct == (6 if differ else 1), (name, distinct)
    probabilities = loaded.signatures['serving_default'](
        images=tf.constant(same))['probabilities']
    np.testing.assert_allclose(tf.reduce_sum(probabilities, 1), 1, atol=1e-5)


# -- clients against the loopback stand-in ---------------------------------


@pytest.fixture(scope='module')
def server(exports):
  base = exports['export_dir']
  with ServingStandIn({name: os.path.join(base, name)
                       for name in ('relu', 'lwta')}) as standin:
    yield standin


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.parametrize('request_format', ['instances', 'inputs'])
def test_rest_client_speaks_tf_serving_rest(exports, server, request_format):
  images = exports['test'][0][:5]
  rest = client_lib.RestClient(server.rest_address, 'relu', timeout=30)
  url, body = rest.predict_request(images, request_format=request_format)
  assert url == f'http://{server.rest_address}/v1/models/relu:predict'
  assert body['signature_name'] == 'serving_default'
  outputs = rest.predict(images, request_format=request_format)
  kind, path, sent = server.requests[-1]
  assert (kind, path) == ('rest', '/v1/models/relu:predict')
  assert set(sent) == {'signature_name', request_format}
  expected = tf.nn.softmax(exports['relu']['model'](images)).numpy()
  np.testing.assert_allclose(outputs['probabilities'], expected, atol=1e-5)
  assert outputs['classes'].dtype == np.int64
  np.testing.assert_array_equal(outputs['classes'], expected.argmax(1))
  # One output: TF Serving leaves its name out; the client puts it back.
  logits = rest.predict(images, signature_name='logits',
                        request_format=request_format)
  assert set(logits) == {'logits'} and logits['logits'].shape == (5, 10)


def test_rest_client_versions_status_and_errors(exports, server):
  images = exports['test'][0][:2]
  versioned = client_lib.RestClient(server.rest_address, 'lwta', version=1)
  assert versioned.predict(images)['probabilities'].shape == (2, 10)
  assert server.requests[-1][1] == '/v1/models/lwta/versions/1:predict'
  status = versioned.model_status()
  assert status['model_version_status'][0]['state'] == 'AVAILABLE'
  rest = client_lib.RestClient(server.rest_address, 'lwta')
  with pytest.raises(client_lib.ServingError, match='NaN') as error:
    rest.predict(np.full((1, *SHAPE), np.nan, np.float32))
  assert error.value.code == 'INVALID_ARGUMENT'
  with pytest.raises(client_lib.ServingError) as error:
    client_lib.RestClient(server.rest_address, 'nope').predict(images)
  assert error.value.code == 'NOT_FOUND'
  with pytest.raises(client_lib.ServingError, match='docker run') as error:
    client_lib.RestClient(f'127.0.0.1:{_free_port()}', 'lwta',
                          timeout=5).predict(images)
  assert error.value.code == 'UNAVAILABLE'


def test_server_serves_the_newest_version_by_default(exports, tmp_path):
  """As TF Serving's default version policy (what models.config asks for)."""
  model = exports['relu']['model']
  for _ in range(2):
    saved_model.export_model(model, export_dir=str(tmp_path), name='m',
                             image_shape=SHAPE)
  images = exports['test'][0][:2]
  with ServingStandIn({'m': str(tmp_path / 'm')}) as standin:
    grpc_client = client_lib.GrpcClient(standin.grpc_address, 'm')
    grpc_client.predict(images)
    grpc_client.close()
    assert standin.requests[-1][1].model_spec.HasField('version') is False
    with pytest.raises(client_lib.ServingError) as error:
      client_lib.RestClient(standin.rest_address, 'm', version=1).predict(
          images)
    assert error.value.code == 'NOT_FOUND'
    status = client_lib.RestClient(standin.rest_address, 'm').model_status()
    assert [v['version'] for v in status['model_version_status']] == ['2']


class _Answers(http.server.BaseHTTPRequestHandler):
  """Answers every predict with the HTTP status its path names."""

  def log_message(self, *args):
    pass

  def do_POST(self):  # pylint: disable=invalid-name
    status = int(self.path.split('/')[3].split(':')[0])
    body = json.dumps({'error': f'status {status}'}).encode()
    self.send_response(status)
    self.send_header('Content-Length', str(len(body)))
    self.end_headers()
    self.wfile.write(body)


@pytest.mark.parametrize('status,code', [
    (400, 'INVALID_ARGUMENT'), (404, 'NOT_FOUND'),
    (429, 'RESOURCE_EXHAUSTED'), (500, 'INTERNAL'), (503, 'UNAVAILABLE'),
    (504, 'DEADLINE_EXCEEDED')])
def test_rest_errors_carry_tf_serving_status_names(status, code):
  server = http.server.HTTPServer(('127.0.0.1', 0), _Answers)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    rest = client_lib.RestClient(f'127.0.0.1:{server.server_address[1]}',
                                 str(status), timeout=10)
    with pytest.raises(client_lib.ServingError,
                       match=f'status {status}') as error:
      rest.predict(np.zeros((1, *SHAPE), np.float32))
    assert error.value.code == code
  finally:
    server.shutdown()
    server.server_close()


def test_clients_time_out(exports):
  images = exports['test'][0][:1]
  with socket.socket() as silent:  # Accepts connections, never answers.
    silent.bind(('127.0.0.1', 0))
    silent.listen(8)
    address = f'127.0.0.1:{silent.getsockname()[1]}'
    for client in (client_lib.RestClient(address, 'm', timeout=0.5),
                   client_lib.GrpcClient(address, 'm', timeout=0.5)):
      start = time.monotonic()
      with pytest.raises(client_lib.ServingError) as error:
        client.predict(images)
      assert error.value.code == 'DEADLINE_EXCEEDED', str(error.value)
      assert time.monotonic() - start < 10


BAD_REPLIES = {
    'short': 'answered 1 of the 3 image\\(s\\) sent',
    'nan': 'with NaN or infinite values for 3 of 3 image\\(s\\)',
    'missing_key': 'sent no "probabilities" \\(its outputs: classes\\)',
    'class_99': 'sent class 99 for image 0, outside 0..9',
}


@pytest.fixture
def misbehaving(server):
  """The module's server, made to misbehave by the test, and put right."""
  yield server
  server.misbehave = None


def _address(server, protocol):
  return server.rest_address if protocol == 'rest' else server.grpc_address


@pytest.mark.parametrize('protocol', ['rest', 'grpc'])
@pytest.mark.parametrize('misbehave', list(BAD_REPLIES))
def test_clients_refuse_a_reply_that_is_not_an_answer(exports, misbehaving,
                                                      protocol, misbehave):
  client = client_lib.make_client(protocol, _address(misbehaving, protocol),
                                  'relu', timeout=30)
  misbehaving.misbehave = misbehave
  try:
    with pytest.raises(client_lib.ServingError,
                       match=BAD_REPLIES[misbehave]) as error:
      client.predict(exports['test'][0][:3], num_classes=10)
  finally:
    client.close()
  assert error.value.code == 'BAD_REPLY'
  assert str(error.value).endswith(
      "check that --server and --export_name name a model tf_slwta exported "
      "(--mode=export), and the server's log.")


@pytest.mark.parametrize('outputs,problem', [
    ({'probabilities': [[0.2, 0.8], [0.6, 0.4]], 'classes': [1, 1]},
     'sent class 1 for image 1, but its probabilities favour class 0'),
    ({'probabilities': [[0.2, 0.3], [0.6, 0.4]], 'classes': [1, 0]},
     'probabilities for image 0 that are not a distribution \\(they sum to '
     '0.5\\)'),
    ({'probabilities': [[1.5, -0.5], [0.6, 0.4]], 'classes': [0, 0]},
     'not a distribution'),
    ({'probabilities': [[0.2, 0.8], [0.6, 0.4]], 'classes': [1.5, 0]},
     'sent class 1.5 for image 0, not a whole number'),
    ({'probabilities': [[0.2, 0.8], [0.6]], 'classes': [1, 0]},
     'sent "probabilities" that is not an array of numbers'),
    ({'probabilities': [['a', 'b'], [0.6, 0.4]], 'classes': [1, 0]},
     'not an array of numbers'),
    ({'probabilities': [0.2, 0.8], 'classes': [1, 0]},
     'sent "probabilities" of shape \\[2\\], not \\[2, classes\\]'),
    ({'probabilities': [[0.2, 0.8], [0.6, 0.4]], 'classes': [[1], [0]]},
     'sent "classes" of shape \\[2, 1\\]'),
    ({'probabilities': [[0.2, 0.8], [0.6, 0.4]], 'classes': 1},
     'sent "classes" as one number, not one per image \\(2 sent\\)'),
])
def test_every_reply_is_checked(outputs, problem):
  with pytest.raises(client_lib.ServingError, match=problem) as error:
    client_lib.check_outputs(outputs, 2, 'serving_default', 'server')
  assert error.value.code == 'BAD_REPLY'
  good = {'probabilities': [[0.2, 0.8], [0.5, 0.5]], 'classes': [1, 0]}
  checked = client_lib.check_outputs(good, 2, 'serving_default', 'server')
  assert checked['classes'].dtype == np.int64  # A tie may go either way.
  with pytest.raises(client_lib.ServingError,
                     match='of shape \\[2, 2\\], not \\[2, 10\\]'):
    client_lib.check_outputs(good, 2, 'serving_default', 'server',
                             num_classes=10)
  with pytest.raises(client_lib.ServingError, match='"logits" with NaN'):
    client_lib.check_outputs({'logits': [[0.0, np.nan], [1.0, 2.0]]}, 2,
                             'logits', 'server')


def _within(seconds, call):
  """Runs `call` in a thread; its exception, or fails if it outlives
  `seconds` (a client that hangs fails here instead of hanging the test)."""
  caught = []

  def target():
    try:
      call()
    except Exception as e:  # pylint: disable=broad-except
      caught.append(e)
  thread = threading.Thread(target=target, daemon=True)
  start = time.monotonic()
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f'still waiting after {seconds} s'
  assert caught, 'no error'
  return caught[0], time.monotonic() - start


def test_a_trickling_or_slow_server_meets_the_deadline(exports, misbehaving):
  """The timeout bounds the whole request, not each read of the socket."""
  images = exports['test'][0][:3]
  misbehaving.misbehave, misbehaving.trickle_seconds = 'trickle', 0.1
  rest = client_lib.RestClient(misbehaving.rest_address, 'relu', timeout=1)
  error, took = _within(15, lambda: rest.predict(images))
  assert isinstance(error, client_lib.ServingError), error
  assert error.code == 'DEADLINE_EXCEEDED' and 'no full answer in 1 s' in str(
      error)
  assert took < 3
  misbehaving.misbehave, misbehaving.slow_seconds = 'slow', 3
  grpc_client = client_lib.GrpcClient(misbehaving.grpc_address, 'relu',
                                      timeout=1)
  error, took = _within(15, lambda: grpc_client.predict(images))
  grpc_client.close()
  assert isinstance(error, client_lib.ServingError), error
  assert error.code == 'DEADLINE_EXCEEDED' and took < 3


def test_a_dropped_connection_is_a_serving_error_with_a_fix(exports,
                                                            misbehaving):
  misbehaving.misbehave = 'drop'
  rest = client_lib.RestClient(misbehaving.rest_address, 'relu', timeout=10)
  with pytest.raises(client_lib.ServingError,
                     match='dropped the connection before its answer was '
                     'complete .*check its log, then run the same command '
                     'again') as error:
    rest.predict(exports['test'][0][:3])
  assert error.value.code == 'UNAVAILABLE'


PREDICT_FAILURES = {**BAD_REPLIES,
                    'drop': 'UNAVAILABLE: .*dropped the connection',
                    'trickle': 'DEADLINE_EXCEEDED: .*no full answer in 1 s',
                    'slow': 'DEADLINE_EXCEEDED: .*after 1 s'}


@pytest.mark.parametrize('protocol,misbehave', [
    *[(p, m) for p in ('rest', 'grpc') for m in BAD_REPLIES],
    ('rest', 'drop'), ('rest', 'trickle'), ('grpc', 'slow')])
def test_predict_mode_says_what_was_wrong_in_one_line(
    exports, misbehaving, tmp_path, capsys, protocol, misbehave):
  from tf_slwta.modes import common  # pylint: disable=g-import-not-at-top
  from tf_slwta.modes import predict  # pylint: disable=g-import-not-at-top
  config = config_lib.ExperimentConfig(
      mode='predict', output_dir=str(tmp_path / 'relu'),
      data=config_lib.DataConfig(dataset='synthetic', eval_examples=3),
      serve=config_lib.ServeConfig(server=_address(misbehaving, protocol),
                                   protocol=protocol, model_name='relu',
                                   timeout=1 if misbehave in (
                                       'trickle', 'slow') else 30))
  misbehaving.misbehave = misbehave
  misbehaving.trickle_seconds, misbehaving.slow_seconds = 0.1, 3
  code = common.run_mode(predict.run, config,
                         run_folder.RunFolder(config.output_dir))
  out, err = capsys.readouterr()
  assert code == 1
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  assert re.search(PREDICT_FAILURES[misbehave], lines[0]), lines[0]
  assert 'accuracy' not in out and '3/3' not in out + err
  misbehaving.misbehave = None  # And a good server is believed.
  config = dataclasses.replace(config, serve=dataclasses.replace(
      config.serve, timeout=30))
  assert common.run_mode(predict.run, config,
                         run_folder.RunFolder(config.output_dir)) == 0
  assert 'accuracy' in capsys.readouterr().out


def test_grpc_client_speaks_prediction_service(exports, server):
  images = exports['test'][0][:5]
  grpc_client = client_lib.GrpcClient(server.grpc_address, 'relu', version=1)
  try:
    request = grpc_client.predict_request(images)
    assert (request.model_spec.name, request.model_spec.signature_name,
            request.model_spec.version.value) == ('relu', 'serving_default', 1)
    assert tf.make_ndarray(request.inputs['images']).shape == (5, *SHAPE)
    outputs = grpc_client.predict(images)
    expected = tf.nn.softmax(exports['relu']['model'](images)).numpy()
    np.testing.assert_allclose(outputs['probabilities'], expected, atol=1e-5)
    assert outputs['classes'].dtype == np.int64
    assert set(grpc_client.predict(images, 'logits')) == {'logits'}
    kind, sent = server.requests[-1]
    assert kind == 'grpc' and sent.model_spec.signature_name == 'logits'
    with pytest.raises(client_lib.ServingError, match='in \\[0, 1\\]') as error:
      grpc_client.predict(images * 255)
    assert error.value.code == 'INVALID_ARGUMENT'
  finally:
    grpc_client.close()
  with pytest.raises(client_lib.ServingError) as error:
    client_lib.GrpcClient(server.grpc_address, 'nope').predict(images)
  assert error.value.code == 'NOT_FOUND'
  with pytest.raises(client_lib.ServingError) as error:
    client_lib.GrpcClient(f'127.0.0.1:{_free_port()}', 'relu',
                          timeout=5).predict(images)
  assert error.value.code == 'UNAVAILABLE'


def test_server_addresses_are_parsed():
  assert client_lib.RestClient('example:9000', 'm').base_url == (
      'http://example:9000')
  assert client_lib.RestClient('https://example', 'm').model_url == (
      'https://example:8501/v1/models/m')
  assert client_lib.GrpcClient('example', 'm').target == 'example:8500'
  with pytest.raises(ValueError, match='HOST:PORT'):
    client_lib.RestClient('example:port', 'm')


# -- the command line ------------------------------------------------------


def run_main(*args, timeout=300):
  return subprocess.run(
      [sys.executable, os.path.join(REPO, 'main.py'), *args], cwd=REPO,
      capture_output=True, text=True, timeout=timeout,
      env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})


SMOKE = f'--flagfile={os.path.join(REPO, "flags", "smoke.cfg")}'


@pytest.mark.slow
def test_main_exports_then_predicts_through_a_server(tmp_path):
  run = tmp_path / 'run'
  export_dir = tmp_path / 'saved_models'
  trained = run_main(SMOKE, f'--output_dir={run}')
  assert trained.returncode == 0, trained.stderr[-3000:]
  exported = run_main(SMOKE, f'--output_dir={run}', '--mode=export',
                      f'--export_dir={export_dir}')
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert 'Exported run version 1' in exported.stdout
  assert os.path.exists(export_dir / 'run' / '1' / 'saved_model.pb')
  assert (export_dir / 'models.config').exists()
  picture = tmp_path / 'picture.png'
  picture.write_bytes(tf.io.encode_png(
      np.full((40, 40, 3), 200, np.uint8)).numpy())
  with ServingStandIn({'run': str(export_dir / 'run')}) as standin:
    by_file = run_main(SMOKE, '--mode=predict', f'--output_dir={run}',
                       f'--server={standin.rest_address}',
                       f'--images={picture}')
    assert by_file.returncode == 0, by_file.stderr[-3000:]
    assert f'{picture}: pattern' in by_file.stdout
    by_split = run_main(SMOKE, '--mode=predict', f'--output_dir={run}',
                        f'--server={standin.grpc_address}',
                        '--serving_protocol=grpc', '--eval_examples=64')
    assert by_split.returncode == 0, by_split.stderr[-3000:]
    assert 'on 64 synthetic test images' in by_split.stdout
    assert 'accuracy' in by_split.stdout
    standin.misbehave = 'short'  # A broken server is not believed.
    short = run_main(SMOKE, '--mode=predict', f'--output_dir={run}',
                     f'--server={standin.rest_address}', '--eval_examples=8')
    assert short.returncode == 1 and 'Traceback' not in short.stderr
    assert short.stderr.strip().splitlines()[-1].startswith(
        'error: BAD_REPLY: ') and 'answered 1 of the 8' in short.stderr
  down = run_main(SMOKE, '--mode=predict', f'--server=127.0.0.1:{_free_port()}',
                  '--serving_timeout=5')
  assert down.returncode == 1 and 'UNAVAILABLE' in down.stderr


def test_a_run_folder_with_a_space_is_refused_in_one_line(tmp_path):
  run = tmp_path / 'my run'
  run_folder.RunFolder(str(run)).write_config(tiny_run(run, 0.05))
  result = run_main(f'--output_dir={run}', '--mode=export',
                    f'--export_dir={tmp_path / "saved_models"}')
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      "error: the model would be named 'my run' after --output_dir, and TF "
      'Serving cannot serve that name over REST (letters, digits, "_", "." '
      'and "-" only); pass --export_name=my_run to --mode=export and '
      '--mode=predict.')
  assert not (tmp_path / 'saved_models').exists()


@pytest.mark.parametrize('args,named', [
    (['--mode=predict', '--images=/no/such.png'], 'images'),
    (['--mode=export', '--export_name=a/b'], 'export_name'),
    (['--export_version=-1'], 'export_version'),
    (['--serving_timeout=0'], 'serving_timeout'),
    (['--serving_protocol=soap'], 'serving_protocol'),
    (['--export_sampling=never'], 'export_sampling'),
])
def test_bad_serving_flags_are_refused(args, named):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from tf_slwta import cli  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  cli.define_flags(fv)
  with pytest.raises(flags.Error, match=named):
    fv(['main.py', *args])
    cli.config_from_flags(fv)

"""A loopback stand-in for TensorFlow Serving's REST and gRPC predict APIs.

The tensorflow_model_server binary cannot be installed here, so the client
tests talk to this instead. It imports only TensorFlow, grpc and
tensorflow-serving-api (never tf_slwta), loads every version under each
model's base path as TF Serving does, replays the warm-up records at load,
and holds requests to the documented formats strictly:

  REST  GET  /v1/models/NAME[/versions/V]
        POST /v1/models/NAME[/versions/V]:predict
             {"signature_name"?, "instances" | "inputs"}
             -> {"predictions": [...]} (row) or {"outputs": ...} (columnar);
             errors -> HTTP 4xx/5xx with {"error": "..."}
  gRPC  tensorflow.serving.PredictionService/Predict(PredictRequest)
        errors -> the TF status code (INVALID_ARGUMENT, NOT_FOUND, ...)

Every request it accepted is kept in `requests` for the tests to inspect.
Set `misbehave` to make its serving_default answers go wrong on purpose, as
a broken or wrong server would (`MISBEHAVIOURS`).
"""

import concurrent.futures
import http.server
import json
import os
import re
import socket
import threading
import time
from typing import Dict, List, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

_PATH = re.compile(r'^/v1/models/([^/:]+)(?:/versions/(\d+))?(:predict)?$')
# TF Serving's status -> HTTP mapping, for the codes the stand-in raises.
_HTTP_STATUS = {'INVALID_ARGUMENT': 400, 'FAILED_PRECONDITION': 400,
                'NOT_FOUND': 404, 'DEADLINE_EXCEEDED': 504, 'INTERNAL': 500}
# What `misbehave` may be: the first four spoil serving_default's outputs
# (REST and gRPC); 'drop' closes the REST connection without an answer;
# 'trickle' sends the REST answer one byte every `trickle_seconds`; 'slow'
# answers gRPC after `slow_seconds`.
MISBEHAVIOURS = ('short', 'nan', 'missing_key', 'class_99', 'drop', 'trickle',
                 'slow')


class StandInError(Exception):
  """A request error with its TF status code name."""

  def __init__(self, code: str, message: str):
    super().__init__(message)
    self.code = code
    self.message = message


class ServingStandIn:
  """Serves the latest SavedModel under each `{name: base_path}` on 127.0.0.1.

  Use as a context manager; `rest_address` and `grpc_address` are
  'host:port' once it has started.
  """

  def __init__(self, models: Dict[str, str]):
    self.models = {}
    for name, base_path in models.items():
      # TF Serving's default version policy: serve the latest version only.
      versions = sorted(int(v) for v in os.listdir(base_path)
                        if v.isdigit())[-1:]
      if not versions:
        raise ValueError(f'{base_path} has no version folders.')
      self.models[name] = {v: tf.saved_model.load(os.path.join(base_path, str(v)))
                           for v in versions}
      for version in versions:
        self._replay_warmup(name, version, os.path.join(base_path, str(version)))
    self.requests: List[object] = []
    self._lock = threading.Lock()
    self.misbehave: Optional[str] = None
    self.trickle_seconds = 0.2
    self.slow_seconds = 5.0

  def _spoil(self, signature_name: str,
             outputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """serving_default's outputs as `misbehave` says to get them wrong."""
    if (signature_name or 'serving_default') != 'serving_default':
      return outputs
    outputs = dict(outputs)
    if self.misbehave == 'short':  # Answers the first image only.
      outputs = {k: v[:1] for k, v in outputs.items()}
    elif self.misbehave == 'nan':
      outputs['probabilities'] = np.full_like(outputs['probabilities'],
                                              np.nan)
    elif self.misbehave == 'missing_key':
      del outputs['probabilities']
    elif self.misbehave == 'class_99':
      outputs['classes'] = np.full_like(outputs['classes'], 99)
    return outputs

  # -- the model side ------------------------------------------------------

  def _replay_warmup(self, name, version, path):
    warmup = os.path.join(path, 'assets.extra', 'tf_serving_warmup_requests')
    if not os.path.exists(warmup):
      return
    for record in tf.data.TFRecordDataset(warmup):
      log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
      request = log.predict_log.request
      self.run(name, version, request.model_spec.signature_name,
               {k: tf.make_ndarray(v) for k, v in request.inputs.items()})

  def run(self, name: str, version: Optional[int], signature_name: str,
          inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Runs one signature as TF Serving's Predict does."""
    if name not in self.models:
      raise StandInError('NOT_FOUND',
                         f'Servable not found for request: Latest({name})')
    versions = self.models[name]
    version = version or max(versions)
    if version not in versions:
      raise StandInError('NOT_FOUND', f'Servable not found for request: '
                         f'Specific({name}, {version})')
    signature_name = signature_name or 'serving_default'
    signatures = versions[version].signatures
    if signature_name not in signatures:
      raise StandInError('INVALID_ARGUMENT', f'Serving signature name: '
                         f'"{signature_name}" not found in signature def')
    function = signatures[signature_name]
    expected = set(function.structured_input_signature[1])
    if set(inputs) != expected:
      raise StandInError('INVALID_ARGUMENT', f'input keys {sorted(inputs)} '
                         f'do not match the signature\'s {sorted(expected)}')
    try:
      tensors = {k: tf.constant(np.asarray(v, np.float32)) for k, v in inputs.items()}
      outputs = function(**tensors)
    except tf.errors.InvalidArgumentError as e:
      raise StandInError('INVALID_ARGUMENT', e.message) from e
    except (ValueError, TypeError) as e:
      raise StandInError('INVALID_ARGUMENT', str(e)) from e
    return {k: v.numpy() for k, v in outputs.items()}

  # -- REST ----------------------------------------------------------------

  def _rest_predict(self, name, version, body) -> Dict[str, object]:
    if not isinstance(body, dict):
      raise StandInError('INVALID_ARGUMENT', 'Request body must be a JSON object')
    unknown = set(body) - {'signature_name', 'instances', 'inputs'}
    if unknown:
      raise StandInError('INVALID_ARGUMENT', f'Unexpected keys {sorted(unknown)}')
    if ('instances' in body) == ('inputs' in body):
      raise StandInError('INVALID_ARGUMENT',
                         "JSON object must have exactly one of 'instances' "
                         "or 'inputs'")
    signature_name = body.get('signature_name', 'serving_default')
    if 'instances' in body:
      rows = body['instances']
      if not isinstance(rows, list):
        raise StandInError('INVALID_ARGUMENT', "'instances' must be a list")
      if rows and isinstance(rows[0], dict):
        inputs = {k: np.asarray([row[k] for row in rows]) for k in rows[0]}
      else:  # One input: each instance is its value.
        inputs = {'images': np.asarray(rows, np.float32)}
      outputs = self._spoil(signature_name,
                            self.run(name, version, signature_name, inputs))
      if len(outputs) == 1:
        return {'predictions': next(iter(outputs.values())).tolist()}
      keys = sorted(outputs)
      return {'predictions': [{k: outputs[k][i].tolist() for k in keys}
                              for i in range(len(outputs[keys[0]]))]}
    columns = body['inputs']
    inputs = ({k: np.asarray(v, np.float32) for k, v in columns.items()}
              if isinstance(columns, dict) else
              {'images': np.asarray(columns, np.float32)})
    outputs = self._spoil(signature_name,
                          self.run(name, version, signature_name, inputs))
    if len(outputs) == 1:
      return {'outputs': next(iter(outputs.values())).tolist()}
    return {'outputs': {k: v.tolist() for k, v in outputs.items()}}

  def _rest_handler(self):
    standin = self

    class Handler(http.server.BaseHTTPRequestHandler):
      """The two REST routes."""

      def log_message(self, *args):  # Quiet.
        pass

      def _reply(self, status, payload):
        data = json.dumps(payload).encode('utf-8')
        if standin.misbehave == 'drop' and self.command == 'POST':
          self.close_connection = True  # Gone without a word.
          self.connection.shutdown(socket.SHUT_RDWR)
          return
        if standin.misbehave == 'trickle' and self.command == 'POST':
          head = (f'HTTP/1.1 {status} OK\r\nContent-Type: application/json'
                  f'\r\nContent-Length: {len(data)}\r\n\r\n').encode()
          try:
            for byte in head + data:
              self.wfile.write(bytes([byte]))
              self.wfile.flush()
              time.sleep(standin.trickle_seconds)
          except OSError:  # The client gave up.
            self.close_connection = True
          return
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def _route(self, method):
        match = _PATH.match(self.path)
        if not match or (method == 'POST') != bool(match.group(3)):
          return self._reply(404, {'error': f'Malformed request: {method} '
                                   f'{self.path}'})
        name, version = match.group(1), match.group(2)
        version = int(version) if version else None
        try:
          if method == 'GET':
            if name not in standin.models:
              raise StandInError('NOT_FOUND', f'Could not find any versions '
                                 f'of model {name}')
            versions = ([version] if version else sorted(standin.models[name]))
            return self._reply(200, {'model_version_status': [
                {'version': str(v), 'state': 'AVAILABLE',
                 'status': {'error_code': 'OK', 'error_message': ''}}
                for v in versions]})
          length = int(self.headers.get('Content-Length', 0))
          try:
            # TF Serving accepts NaN and Infinity, as Python's json does.
            body = json.loads(self.rfile.read(length))
          except ValueError as e:
            raise StandInError('INVALID_ARGUMENT', f'JSON Parse error: {e}')
          with standin._lock:  # pylint: disable=protected-access
            standin.requests.append(('rest', self.path, body))
          return self._reply(200, standin._rest_predict(name, version, body))  # pylint: disable=protected-access
        except StandInError as e:
          return self._reply(_HTTP_STATUS.get(e.code, 500), {'error': e.message})

      def do_GET(self):  # pylint: disable=invalid-name
        self._route('GET')

      def do_POST(self):  # pylint: disable=invalid-name
        self._route('POST')

    return Handler

  # -- gRPC ----------------------------------------------------------------

  def _grpc_servicer(self):
    standin = self

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
      """PredictionService.Predict."""

      def Predict(self, request, context):  # pylint: disable=invalid-name
        with standin._lock:  # pylint: disable=protected-access
          standin.requests.append(('grpc', request))
        spec = request.model_spec
        version = spec.version.value if spec.HasField('version') else None
        for key, tensor in request.inputs.items():
          if tensor.dtype != tf.float32.as_datatype_enum:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f'Expects arg[{key}] to be float but '
                          f'{tf.as_dtype(tensor.dtype).name} is provided')
        try:
          outputs = standin.run(
              spec.name, version, spec.signature_name,
              {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        except StandInError as e:
          context.abort(getattr(grpc.StatusCode, e.code), e.message)
        outputs = standin._spoil(spec.signature_name, outputs)  # pylint: disable=protected-access
        if standin.misbehave == 'slow':
          time.sleep(standin.slow_seconds)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.signature_name = spec.signature_name or 'serving_default'
        response.model_spec.version.value = version or max(standin.models[spec.name])
        for key, value in outputs.items():
          response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    return Servicer()

  # -- life cycle ----------------------------------------------------------

  def __enter__(self):
    self._http = http.server.ThreadingHTTPServer(('127.0.0.1', 0),
                                                 self._rest_handler())
    self._http_thread = threading.Thread(target=self._http.serve_forever,
                                         daemon=True)
    self._http_thread.start()
    self._grpc = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        self._grpc_servicer(), self._grpc)
    grpc_port = self._grpc.add_insecure_port('127.0.0.1:0')
    self._grpc.start()
    self.rest_address = f'127.0.0.1:{self._http.server_address[1]}'
    self.grpc_address = f'127.0.0.1:{grpc_port}'
    return self

  def __exit__(self, *exc):
    self._http.shutdown()
    self._http.server_close()
    self._grpc.stop(grace=None)

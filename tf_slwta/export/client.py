"""Clients for a running TensorFlow Serving: REST and gRPC.

Both speak TF Serving's documented protocols and return the same thing, a
dict of NumPy arrays keyed by the signature's output names:

  * REST: `POST http://HOST:8501/v1/models/NAME[/versions/V]:predict` with
    `{"signature_name": ..., "instances": [...]}` (row format) or
    `{"signature_name": ..., "inputs": {...}}` (columnar format); errors come
    back as `{"error": "..."}` with an HTTP error status.
  * gRPC: `tensorflow.serving.PredictionService/Predict` on HOST:8500 with a
    `PredictRequest` built from `tensorflow-serving-api`'s protos.

Every failure (server down, timeout, unknown model, a rejected input, a
dropped connection) is raised as `ServingError` with the server's message
and what to do. No reply is trusted: each is checked (`check_outputs`: one
answer per image sent, shapes, finite probabilities summing to 1, classes
in range and equal to the probabilities' argmax) and refused as
`BAD_REPLY` otherwise. `timeout` is a deadline for the whole request, REST
(a server trickling its answer is cut off) as gRPC.

  client = make_client('rest', 'localhost:8501', 'quickstart')
  outputs = client.predict(images)   # images float32 [B, H, W, C] in [0, 1]
  outputs['probabilities'], outputs['classes']
"""

import http.client
import json
import socket
import ssl
import threading
import urllib.parse
from typing import Dict, Optional, Tuple

import numpy as np

SERVING_SIGNATURE = 'serving_default'
INPUT_KEY = 'images'
# Outputs per signature: TF Serving's row format leaves the name out when a
# signature has one output, so the client must know it.
SIGNATURE_OUTPUTS = {'serving_default': ('classes', 'probabilities'),
                     'logits': ('logits',)}
REST_PORT, GRPC_PORT = 8501, 8500
_START_SERVER = (
    'start it with: docker run --rm -p 8500:8500 -p 8501:8501 -v '
    '"$PWD/saved_models:/models" tensorflow/serving '
    '--model_config_file=/models/models.config (see README.md)')
_CHECK_SERVER = ('check that --server and --export_name name a model '
                 'tf_slwta exported (--mode=export), and the server\'s log')
# How far the probabilities of one image may sum from 1 (float32 averages
# of softmaxes, and their JSON text, are within 1e-5).
_SUM_TOLERANCE = 1e-3


class ServingError(RuntimeError):
  """TF Serving refused or failed a request, or could not be reached.

  Attributes:
    code: the gRPC status name ('INVALID_ARGUMENT', 'NOT_FOUND',
      'UNAVAILABLE', 'DEADLINE_EXCEEDED', ...) or, for REST, the same name
      where it can be told, else 'HTTP <status>'; 'BAD_REPLY' when the
      server answered something that is not a valid answer (`check_outputs`).
  """

  def __init__(self, code: str, message: str):
    super().__init__(f'{code}: {message}')
    self.code = code


def _host_port(server: str, default_port: int) -> Tuple[str, int]:
  """'host:port', 'host' or 'scheme://host:port' -> (host, port)."""
  parsed = urllib.parse.urlsplit(server if '://' in server else f'//{server}')
  try:
    port = parsed.port or default_port
  except ValueError as e:
    raise ValueError(f'server {server!r} has a bad port; use HOST:PORT, '
                     f'e.g. localhost:{default_port}.') from e
  if not parsed.hostname:
    raise ValueError(f'server {server!r} names no host; use HOST:PORT, '
                     f'e.g. localhost:{default_port}.')
  return parsed.hostname, port


def _bad_reply(source: str, problem: str) -> ServingError:
  return ServingError('BAD_REPLY', f'{source} {problem}; {_CHECK_SERVER}.')


def _first(mask: np.ndarray) -> int:
  return int(np.flatnonzero(mask)[0])


def check_outputs(outputs: Dict[str, np.ndarray], sent: int,
                  signature_name: str, source: str,
                  num_classes: Optional[int] = None
                  ) -> Dict[str, np.ndarray]:
  """Refuses a reply that is not a valid answer for `sent` images.

  Args:
    outputs: {output name: array} as the server sent it.
    sent: images in the request, >= 1.
    signature_name: the signature asked for; 'serving_default' needs
      'probabilities' `[sent, K]` (finite, in [0, 1], each row summing to 1)
      and 'classes' `[sent]` (whole numbers in [0, K), each a most probable
      class of its row); 'logits' needs finite 'logits' `[sent, K]`; others
      one row per image in every output.
    source: who answered (a URL or HOST:PORT), for the message.
    num_classes: K, when the caller knows how many classes the model has.

  Returns:
    `outputs` with 'classes' as int64 and every other output as float32.

  Raises:
    ServingError: code 'BAD_REPLY', naming the first problem found.
  """
  wanted = SIGNATURE_OUTPUTS.get(signature_name, ())
  missing = [name for name in wanted if name not in outputs]
  if missing:
    return_names = ', '.join(sorted(outputs)) or 'none'
    raise _bad_reply(source, f'sent no "{missing[0]}" (its outputs: '
                     f'{return_names})')
  arrays = {}
  for name, value in outputs.items():
    try:
      arrays[name] = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
      raise _bad_reply(source, f'sent "{name}" that is not an array of '
                       f'numbers') from None
  for name, array in arrays.items():
    if array.ndim == 0:
      raise _bad_reply(source, f'sent "{name}" as one number, not one per '
                       f'image ({sent} sent)')
    if len(array) != sent:
      raise _bad_reply(source, f'answered {len(array)} of the {sent} '
                       f'image(s) sent ("{name}" has shape '
                       f'{list(array.shape)})')
  for name in ('probabilities', 'logits'):
    if name not in wanted:
      continue
    array = arrays[name]
    if array.ndim != 2 or (num_classes and array.shape[1] != num_classes):
      expected = f'[{sent}, {num_classes or "classes"}]'
      raise _bad_reply(source, f'sent "{name}" of shape {list(array.shape)}, '
                       f'not {expected}')
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
      raise _bad_reply(source, f'sent "{name}" with NaN or infinite values '
                       f'for {int(bad.sum())} of {sent} image(s) (the first: '
                       f'image {_first(bad)})')
  if 'probabilities' in wanted:
    probabilities, classes = arrays['probabilities'], arrays['classes']
    sums = probabilities.sum(axis=1)
    bad = ((probabilities < 0) | (probabilities > 1)).any(axis=1) | (
        np.abs(sums - 1) > _SUM_TOLERANCE)
    if bad.any():
      i = _first(bad)
      raise _bad_reply(source, f'sent probabilities for image {i} that are '
                       f'not a distribution (they sum to {sums[i]:.4g})')
    k = probabilities.shape[1]
    if classes.ndim != 1:
      raise _bad_reply(source, f'sent "classes" of shape '
                       f'{list(classes.shape)}, not [{sent}]')
    bad = classes != np.round(classes)
    if bad.any():
      i = _first(bad)
      raise _bad_reply(source, f'sent class {classes[i]:g} for image {i}, '
                       f'not a whole number')
    bad = (classes < 0) | (classes >= k)
    if bad.any():
      i = _first(bad)
      raise _bad_reply(source, f'sent class {classes[i]:g} for image {i}, '
                       f'outside 0..{k - 1}')
    picked = probabilities[np.arange(sent), classes.astype(np.int64)]
    bad = picked < probabilities.max(axis=1)
    if bad.any():
      i = _first(bad)
      raise _bad_reply(source, f'sent class {int(classes[i])} for image {i}, '
                       f'but its probabilities favour class '
                       f'{int(probabilities[i].argmax())}')
  return _typed(arrays)


def _check_images(images) -> np.ndarray:
  array = np.asarray(images, dtype=np.float32)
  if array.ndim != 4:
    raise ValueError(f'images must be [batch, H, W, C], got shape '
                     f'{array.shape}.')
  return array


class RestClient:
  """TF Serving's REST predict API.

  Args:
    server: 'HOST:PORT' or 'http://HOST:PORT' (port 8501 by default).
    model_name: the served model's name.
    version: ask for this version; None for the server's latest.
    timeout: seconds to wait for a response, > 0.
  """

  # TF Serving's REST errors carry no status name; its HTTP statuses map
  # back (400 also stands for FAILED_PRECONDITION and OUT_OF_RANGE).
  _HTTP_CODES = {400: 'INVALID_ARGUMENT', 401: 'UNAUTHENTICATED',
                 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND', 409: 'ABORTED',
                 429: 'RESOURCE_EXHAUSTED', 499: 'CANCELLED',
                 500: 'INTERNAL', 501: 'UNIMPLEMENTED', 503: 'UNAVAILABLE',
                 504: 'DEADLINE_EXCEEDED'}

  def __init__(self, server: str, model_name: str, *,
               version: Optional[int] = None, timeout: float = 30.0):
    host, port = _host_port(server, REST_PORT)
    scheme = 'https' if server.startswith('https://') else 'http'
    self.base_url = f'{scheme}://{host}:{port}'
    self.model_name = model_name
    self.version = version
    self.timeout = timeout

  @property
  def model_url(self) -> str:
    """`.../v1/models/NAME[/versions/V]`."""
    url = f'{self.base_url}/v1/models/{self.model_name}'
    return f'{url}/versions/{self.version}' if self.version else url

  def predict_request(self, images, signature_name: str = SERVING_SIGNATURE,
                      request_format: str = 'instances'
                      ) -> Tuple[str, Dict[str, object]]:
    """The URL and JSON body of a predict request, as TF Serving documents.

    Args:
      images: float32 `[B, H, W, C]` in [0, 1].
      signature_name: the signature to run.
      request_format: 'instances' (row format: one entry per image) or
        'inputs' (columnar format: the named input as one tensor).

    Returns:
      (URL ending in ':predict', body dict ready for json.dumps).
    """
    array = _check_images(images)
    if request_format == 'instances':
      body = {'signature_name': signature_name, 'instances': array.tolist()}
    elif request_format == 'inputs':
      body = {'signature_name': signature_name,
              'inputs': {INPUT_KEY: array.tolist()}}
    else:
      raise ValueError(f"request_format must be 'instances' or 'inputs', "
                       f'got {request_format!r}.')
    return f'{self.model_url}:predict', body

  def predict(self, images, signature_name: str = SERVING_SIGNATURE,
              request_format: str = 'instances',
              num_classes: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Runs a signature on `images` through the server.

    Args:
      images: float32 `[B, H, W, C]` in [0, 1].
      signature_name: 'serving_default' or 'logits'.
      request_format: 'instances' or 'inputs' (see `predict_request`).
      num_classes: the model's class count K, if known (checked).

    Returns:
      {output name: array with a leading batch axis}; for serving_default
      'probabilities' float32 `[B, K]` and 'classes' int64 `[B]`, checked
      by `check_outputs`.

    Raises:
      ServingError: the server rejected the request, was not reached, took
        longer than `timeout` in all, dropped the connection, or answered
        something that is not a valid answer ('BAD_REPLY').
    """
    url, body = self.predict_request(images, signature_name, request_format)
    reply = self._call(url, json.dumps(body).encode('utf-8'))
    names = SIGNATURE_OUTPUTS.get(signature_name, ('output',))
    outputs = None
    if isinstance(reply, dict) and 'predictions' in reply:
      rows = reply['predictions']
      if isinstance(rows, list) and rows and all(
          isinstance(row, dict) for row in rows):
        keys = set(rows[0]).intersection(*rows)
        outputs = {k: [row[k] for row in rows] for k in keys}
      elif isinstance(rows, list) and not any(isinstance(row, dict)
                                              for row in rows):
        outputs = {names[0]: rows}  # One output: TF Serving leaves its name out.
    elif isinstance(reply, dict) and 'outputs' in reply:
      columns = reply['outputs']
      outputs = (dict(columns) if isinstance(columns, dict) else
                 {names[0]: columns})
    if outputs is None:
      raise _bad_reply(url, f'answered neither "predictions" nor "outputs" '
                       f'in TF Serving\'s form: {str(reply)[:200]}')
    sent = len(body['instances'] if 'instances' in body else
               body['inputs'][INPUT_KEY])
    return check_outputs(outputs, sent, signature_name, url, num_classes)

  def model_status(self) -> Dict[str, object]:
    """`GET /v1/models/NAME[/versions/V]`: the versions and their states."""
    return self._call(self.model_url, None)

  def close(self) -> None:
    """Nothing to release: each request opens its own connection."""

  def _call(self, url: str, data: Optional[bytes]) -> object:
    """One request; its JSON reply, all of it within `timeout` seconds.

    A socket timeout alone bounds each read, so a server sending a byte a
    second never times out; a timer shuts the connection down at the
    deadline instead. Connects directly (no proxy), as to a local server.
    """
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f'?{parts.query}' if parts.query else '')
    if parts.scheme == 'https':
      connection = http.client.HTTPSConnection(
          parts.hostname, parts.port, timeout=self.timeout,
          context=ssl.create_default_context())
    else:
      connection = http.client.HTTPConnection(parts.hostname, parts.port,
                                              timeout=self.timeout)
    expired = threading.Event()

    def cut_off():
      expired.set()
      if connection.sock is not None:
        try:
          connection.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
          pass  # Already closed.

    timer = threading.Timer(self.timeout, cut_off)
    timer.daemon = True
    timer.start()
    connected = False
    try:
      connection.connect()
      connected = True
      connection.request('POST' if data is not None else 'GET', path,
                         body=data,
                         headers={'Content-Type': 'application/json'})
      response = connection.getresponse()
      text = response.read()
      if expired.is_set():
        raise TimeoutError()
      status = response.status
    except (socket.timeout, TimeoutError) as e:
      raise ServingError('DEADLINE_EXCEEDED', f'{url} gave no full answer '
                         f'in {self.timeout:g} s; raise --serving_timeout '
                         f'or send smaller batches (--serving_batch_size).'
                         ) from e
    except (OSError, http.client.HTTPException) as e:
      if expired.is_set():
        raise ServingError(
            'DEADLINE_EXCEEDED', f'{url} gave no full answer in '
            f'{self.timeout:g} s; raise --serving_timeout or send smaller '
            f'batches (--serving_batch_size).') from e
      if not connected:
        raise ServingError('UNAVAILABLE', f'cannot reach TF Serving at '
                           f'{self.base_url} ({e}); {_START_SERVER}.') from e
      if isinstance(e, http.client.BadStatusLine) and not isinstance(
          e, http.client.RemoteDisconnected):
        raise ServingError('UNAVAILABLE', f'{self.base_url} does not answer '
                           f'HTTP ({e!r}); is it TF Serving\'s REST port '
                           f'({REST_PORT})? For its gRPC port pass '
                           f'--serving_protocol=grpc.') from e
      raise ServingError(
          'UNAVAILABLE', f'{url} dropped the connection before its answer '
          f'was complete ({type(e).__name__}); the server may have crashed '
          f'or restarted: check its log, then run the same command '
          f'again.') from e
    finally:
      timer.cancel()
      connection.close()
    if status >= 400:
      message = text.decode('utf-8', 'replace')
      try:
        message = json.loads(message)['error']
      except (ValueError, KeyError, TypeError):
        message = message.strip() or response.reason
      code = self._HTTP_CODES.get(status, f'HTTP {status}')
      hint = (' (the server gave up; raise its timeout or send smaller '
              'batches)' if code == 'DEADLINE_EXCEEDED' else '')
      raise ServingError(code, f'{url}: {message}{hint}')
    try:
      return json.loads(text.decode('utf-8'))
    except ValueError as e:
      raise _bad_reply(url, f'answered {len(text)} bytes that are not JSON '
                       f'({e})') from e


class GrpcClient:
  """TF Serving's gRPC PredictionService.

  Args:
    server: 'HOST:PORT' (port 8500 by default).
    model_name: the served model's name.
    version: ask for this version; None for the server's latest.
    timeout: seconds to wait for a response (the call's deadline), > 0.
  """

  def __init__(self, server: str, model_name: str, *,
               version: Optional[int] = None, timeout: float = 30.0):
    import grpc  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top
    host, port = _host_port(server, GRPC_PORT)
    self.target = f'{host}:{port}'
    self.model_name = model_name
    self.version = version
    self.timeout = timeout
    self._channel = grpc.insecure_channel(self.target, options=[
        ('grpc.max_receive_message_length', -1),
        ('grpc.max_send_message_length', -1)])
    self._stub = prediction_service_pb2_grpc.PredictionServiceStub(
        self._channel)

  def predict_request(self, images, signature_name: str = SERVING_SIGNATURE):
    """The `PredictRequest` for `images` (float32 `[B, H, W, C]` in [0, 1])."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
    request = predict_pb2.PredictRequest()
    request.model_spec.name = self.model_name
    request.model_spec.signature_name = signature_name
    if self.version:
      request.model_spec.version.value = self.version
    request.inputs[INPUT_KEY].CopyFrom(
        tf.make_tensor_proto(_check_images(images)))
    return request

  def predict(self, images, signature_name: str = SERVING_SIGNATURE,
              num_classes: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Runs a signature on `images` through the server.

    Args:
      images: float32 `[B, H, W, C]` in [0, 1].
      signature_name: 'serving_default' or 'logits'.
      num_classes: the model's class count K, if known (checked).

    Returns:
      {output name: array with a leading batch axis}; for serving_default
      'probabilities' float32 `[B, K]` and 'classes' int64 `[B]`, checked
      by `check_outputs`.

    Raises:
      ServingError: with the gRPC status name as its code (the call's
        deadline is `timeout`), or 'BAD_REPLY'.
    """
    import grpc  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    request = self.predict_request(images, signature_name)
    try:
      response = self._stub.Predict(request, timeout=self.timeout)
    except grpc.RpcError as e:
      code = e.code().name if e.code() else 'UNKNOWN'
      details = e.details() or ''
      dropped = ('; the connection dropped: the server may have crashed or '
                 'restarted; check its log, then run the same command again')
      hint = {'UNAVAILABLE': (f'; {_START_SERVER}' if 'connect' in
                              details.lower() else dropped),
              'DEADLINE_EXCEEDED': (f' (after {self.timeout:g} s); raise '
                                    f'--serving_timeout or send smaller '
                                    f'batches')}.get(code, '')
      raise ServingError(code, f'{self.target}: {details}{hint}') from e
    try:
      outputs = {name: tf.make_ndarray(proto)
                 for name, proto in response.outputs.items()}
    except (TypeError, ValueError) as e:
      raise _bad_reply(self.target, f'sent outputs that are not tensors '
                       f'({e})') from e
    return check_outputs(outputs, int(request.inputs[INPUT_KEY].tensor_shape
                                      .dim[0].size), signature_name,
                         self.target, num_classes)

  def close(self) -> None:
    """Closes the channel."""
    self._channel.close()


def _typed(outputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Checked numbers back to the signature's dtypes."""
  typed = {}
  for name, value in outputs.items():
    typed[name] = (value.astype(np.int64) if name == 'classes'
                   else value.astype(np.float32))
  return typed


def make_client(protocol: str, server: str, model_name: str, *,
                version: Optional[int] = None, timeout: float = 30.0):
  """A `RestClient` ('rest') or `GrpcClient` ('grpc') for `server`."""
  kinds = {'rest': RestClient, 'grpc': GrpcClient}
  if protocol not in kinds:
    raise ValueError(f"protocol must be 'rest' or 'grpc', got {protocol!r}.")
  return kinds[protocol](server, model_name, version=version, timeout=timeout)

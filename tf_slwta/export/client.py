"""Clients for a running TensorFlow Serving: REST and gRPC.

Both speak TF Serving's documented protocols and return the same thing, a
dict of NumPy arrays keyed by the signature's output names:

  * REST: `POST http://HOST:8501/v1/models/NAME[/versions/V]:predict` with
    `{"signature_name": ..., "instances": [...]}` (row format) or
    `{"signature_name": ..., "inputs": {...}}` (columnar format); errors come
    back as `{"error": "..."}` with an HTTP error status.
  * gRPC: `tensorflow.serving.PredictionService/Predict` on HOST:8500 with a
    `PredictRequest` built from `tensorflow-serving-api`'s protos.

Every failure (server down, timeout, unknown model, a rejected input) is
raised as `ServingError` with the server's message and what to do.

  client = make_client('rest', 'localhost:8501', 'quickstart')
  outputs = client.predict(images)   # images float32 [B, H, W, C] in [0, 1]
  outputs['probabilities'], outputs['classes']
"""

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
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


class ServingError(RuntimeError):
  """TF Serving refused or failed a request, or could not be reached.

  Attributes:
    code: the gRPC status name ('INVALID_ARGUMENT', 'NOT_FOUND',
      'UNAVAILABLE', 'DEADLINE_EXCEEDED', ...) or, for REST, the same name
      where it can be told, else 'HTTP <status>'.
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
              request_format: str = 'instances') -> Dict[str, np.ndarray]:
    """Runs a signature on `images` through the server.

    Args:
      images: float32 `[B, H, W, C]` in [0, 1].
      signature_name: 'serving_default' or 'logits'.
      request_format: 'instances' or 'inputs' (see `predict_request`).

    Returns:
      {output name: array with a leading batch axis}; for serving_default
      'probabilities' float32 `[B, K]` and 'classes' int64 `[B]`.

    Raises:
      ServingError: the server rejected the request or was not reached.
    """
    url, body = self.predict_request(images, signature_name, request_format)
    reply = self._call(url, json.dumps(body).encode('utf-8'))
    names = SIGNATURE_OUTPUTS.get(signature_name, ('output',))
    if 'predictions' in reply:
      rows = reply['predictions']
      if rows and isinstance(rows[0], dict):
        outputs = {k: np.asarray([row[k] for row in rows]) for k in rows[0]}
      else:  # One output: TF Serving leaves its name out.
        outputs = {names[0]: np.asarray(rows)}
    elif 'outputs' in reply:
      columns = reply['outputs']
      outputs = ({k: np.asarray(v) for k, v in columns.items()}
                 if isinstance(columns, dict) else
                 {names[0]: np.asarray(columns)})
    else:
      raise ServingError('INTERNAL', f'response from {url} has neither '
                         f'"predictions" nor "outputs": {str(reply)[:200]}')
    return _typed(outputs)

  def model_status(self) -> Dict[str, object]:
    """`GET /v1/models/NAME[/versions/V]`: the versions and their states."""
    return self._call(self.model_url, None)

  def close(self) -> None:
    """Nothing to release: each request opens its own connection."""

  def _call(self, url: str, data: Optional[bytes]) -> Dict[str, object]:
    request = urllib.request.Request(
        url, data=data, method='POST' if data is not None else 'GET',
        headers={'Content-Type': 'application/json'})
    try:
      with urllib.request.urlopen(request, timeout=self.timeout) as response:
        return json.loads(response.read().decode('utf-8'))
    except urllib.error.HTTPError as e:
      text = e.read().decode('utf-8', 'replace')
      try:
        message = json.loads(text)['error']
      except (ValueError, KeyError, TypeError):
        message = text.strip() or e.reason
      code = self._HTTP_CODES.get(e.code, f'HTTP {e.code}')
      hint = (' (the server gave up; raise its timeout or send smaller '
              'batches)' if code == 'DEADLINE_EXCEEDED' else '')
      raise ServingError(code, f'{url}: {message}{hint}') from e
    except (socket.timeout, TimeoutError) as e:
      raise ServingError('DEADLINE_EXCEEDED', f'{url} gave no answer in '
                         f'{self.timeout:g} s; raise --serving_timeout or '
                         f'send smaller batches.') from e
    except urllib.error.URLError as e:
      if isinstance(e.reason, (socket.timeout, TimeoutError)):
        raise ServingError('DEADLINE_EXCEEDED', f'{url} gave no answer in '
                           f'{self.timeout:g} s.') from e
      raise ServingError('UNAVAILABLE', f'cannot reach TF Serving at '
                         f'{self.base_url} ({e.reason}); {_START_SERVER}.'
                         ) from e


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

  def predict(self, images, signature_name: str = SERVING_SIGNATURE
              ) -> Dict[str, np.ndarray]:
    """Runs a signature on `images` through the server.

    Args:
      images: float32 `[B, H, W, C]` in [0, 1].
      signature_name: 'serving_default' or 'logits'.

    Returns:
      {output name: array with a leading batch axis}; for serving_default
      'probabilities' float32 `[B, K]` and 'classes' int64 `[B]`.

    Raises:
      ServingError: with the gRPC status name as its code.
    """
    import grpc  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    request = self.predict_request(images, signature_name)
    try:
      response = self._stub.Predict(request, timeout=self.timeout)
    except grpc.RpcError as e:
      code = e.code().name if e.code() else 'UNKNOWN'
      hint = {'UNAVAILABLE': f'; {_START_SERVER}',
              'DEADLINE_EXCEEDED': (f' (after {self.timeout:g} s); raise '
                                    f'--serving_timeout or send smaller '
                                    f'batches')}.get(code, '')
      raise ServingError(code, f'{self.target}: {e.details()}{hint}') from e
    return _typed({name: tf.make_ndarray(proto)
                   for name, proto in response.outputs.items()})

  def close(self) -> None:
    """Closes the channel."""
    self._channel.close()


def _typed(outputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """JSON numbers back to the signature's dtypes."""
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

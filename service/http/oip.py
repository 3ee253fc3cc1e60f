"""The Open Inference Protocol's REST wire format (KServe v2, Triton's HTTP/REST API).

A request is a JSON header naming its input tensors (name, datatype, shape, `data` flat
row-major or nested), optionally followed by Triton's binary tensor data extension: the
header's length in `Inference-Header-Content-Length`, then each input that declares
`parameters.binary_data_size` as that many little-endian bytes, in order. Outputs are JSON
`data`, or binary when asked (`binary_data`, `binary_data_output`). Errors: `{"error": ...}`.
Here inputs are FP32, FP64 or UINT8 (scaled by 1/255), [rows, width], finite; outputs FP32.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Array = npt.NDArray[np.float32]
HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_MEDIA_TYPE = "application/octet-stream"
INPUT_TYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "UINT8": np.dtype("u1"),
}
UNSUPPORTED_PARAMETERS = ("classification", "shared_memory_region")


class ProtocolError(Exception):
    """A request the protocol refuses: the status and what was wrong, and what is expected."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def body(self) -> bytes:
        return json.dumps({"error": self.message}).encode()


class ErrorBody(BaseModel):
    """The protocol's error: what was wrong and what is expected."""

    error: str


class RequestInput(BaseModel):
    """An input tensor: `data` (flat row-major, or nested), or binary data after the header."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class RequestOutput(BaseModel):
    """An output to return; `parameters.binary_data` asks for it as binary data."""

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """An inference request (the JSON header, when binary data follows)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "inputs": [
                        {"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0, 1, 0]}
                    ],
                    "outputs": [{"name": "probs"}],
                }
            ]
        }
    )
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


@dataclass(frozen=True)
class TensorSpec:
    """A model's tensor: its name and its width (the protocol's shape is [-1, width])."""

    name: str
    width: int
    datatype: str = "FP32"

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, self.width]}


def decompressed(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """The body without its Content-Encoding (gzip or deflate), at most `max_bytes`."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    kind = encoding.strip().lower()
    if kind not in ("gzip", "deflate"):
        raise ProtocolError(400, f"Content-Encoding {encoding!r}: expected gzip, deflate or none")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if kind == "gzip" else 0))
    try:
        data = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise ProtocolError(400, f"the body is not valid {kind} data ({exc})") from exc
    if len(data) > max_bytes:
        raise ProtocolError(413, f"the decompressed body is larger than {max_bytes} bytes")
    return data


def read_request(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """The request's JSON header, parsed, and the binary data that follows it."""
    header, binary = body, b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise ProtocolError(
                400, f"{HEADER_LENGTH} must be a byte count, got {header_length!r}"
            ) from None
        if not 0 < length <= len(body):
            raise ProtocolError(
                400, f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes"
            )
        header, binary = body[:length], body[length:]
    try:
        request = InferRequest.model_validate_json(header)
    except ValidationError as exc:
        raise ProtocolError(400, f"the inference request is not valid: {_first(exc)}") from exc
    for parameter in UNSUPPORTED_PARAMETERS:
        if parameter in (request.parameters or {}):
            raise ProtocolError(400, f"parameter {parameter!r} is not supported here")
    return request, binary


def input_tensors(
    request: InferRequest, binary: bytes, specs: tuple[TensorSpec, ...]
) -> dict[str, Array]:
    """Each input as float32 [rows, width]: every spec'd input exactly once, every byte of
    the binary data used."""
    by_name = {spec.name: spec for spec in specs}
    arrays: dict[str, Array] = {}
    offset = 0
    for item in request.inputs:
        spec = by_name.get(item.name)
        if spec is None or item.name in arrays:
            problem = "is given twice" if spec is not None else "is not an input of this model"
            raise ProtocolError(400, f"input {item.name!r} {problem}; {_expected(specs)}")
        size = _binary_size(item)
        if size is None:
            arrays[item.name] = _checked(item, spec, _json_values(item))
        else:
            chunk = binary[offset : offset + size]
            offset += size
            arrays[item.name] = _checked(item, spec, _binary_values(item, chunk, size))
    if offset != len(binary):
        raise ProtocolError(
            400, f"the binary data has {len(binary)} bytes, the inputs declare {offset}"
        )
    missing = [name for name in by_name if name not in arrays]
    if missing:
        raise ProtocolError(400, f"input {missing[0]!r} is missing; {_expected(specs)}")
    return arrays


def _expected(specs: tuple[TensorSpec, ...]) -> str:
    described = ", ".join(f"{s.name} {s.datatype} [-1, {s.width}]" for s in specs)
    return f"expected: {described}"


def _binary_size(item: RequestInput) -> int | None:
    size = (item.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ProtocolError(
            400, f"input {item.name!r}: binary_data_size must be a byte count, got {size!r}"
        )
    return size


def _dtype(item: RequestInput) -> np.dtype[Any]:
    dtype = INPUT_TYPES.get(item.datatype)
    if dtype is None:
        raise ProtocolError(
            400,
            f"input {item.name!r} has datatype {item.datatype!r}; "
            f"expected one of {', '.join(INPUT_TYPES)}",
        )
    return dtype


def _json_values(item: RequestInput) -> np.ndarray:
    dtype = _dtype(item)
    if item.data is None:
        raise ProtocolError(400, f"input {item.name!r} has no data and no binary_data_size")
    try:
        values = np.asarray(item.data)
    except ValueError as exc:  # ragged nesting
        raise ProtocolError(400, f"input {item.name!r}: data is not a regular array") from exc
    if values.dtype.kind not in "iuf" or (dtype.kind == "u" and values.dtype.kind == "f"):
        kind = "integers" if dtype.kind == "u" else "numbers"
        raise ProtocolError(400, f"input {item.name!r}: data must be {kind} for {item.datatype}")
    return values.reshape(-1)


def _binary_values(item: RequestInput, chunk: bytes, size: int) -> np.ndarray:
    dtype = _dtype(item)
    if len(chunk) != size or size % dtype.itemsize:
        raise ProtocolError(
            400,
            f"input {item.name!r}: binary_data_size {size} does not fit the body's binary "
            f"data ({len(chunk)} bytes left) or {item.datatype} ({dtype.itemsize} bytes each)",
        )
    return np.frombuffer(chunk, dtype=dtype)


def _checked(item: RequestInput, spec: TensorSpec, values: np.ndarray) -> Array:
    """Flat values -> float32 [rows, width], checked against the declared shape."""
    shape = item.shape
    if len(shape) != 2 or shape[1] != spec.width or shape[0] < 1:
        raise ProtocolError(
            400, f"input {item.name!r} has shape {shape}; expected [rows, {spec.width}]"
        )
    if values.size != math.prod(shape):
        raise ProtocolError(400, f"input {item.name!r} has {values.size} values for shape {shape}")
    if item.datatype == "UINT8":
        if values.min() < 0 or values.max() > 255:
            raise ProtocolError(400, f"input {item.name!r}: UINT8 values must be 0..255")
        return (values.astype(np.float32) / np.float32(255.0)).reshape(shape)
    x = values.astype(np.float32).reshape(shape)
    if not np.isfinite(x).all():
        raise ProtocolError(400, f"input {item.name!r} holds NaN or infinity; expected finite")
    return x


def wanted_outputs(request: InferRequest, names: tuple[str, ...]) -> dict[str, bool]:
    """The outputs to return, each with whether it goes as binary data: all of the model's
    when the request names none."""
    every = bool((request.parameters or {}).get("binary_data_output", False))
    if not request.outputs:
        return dict.fromkeys(names, every)
    wanted: dict[str, bool] = {}
    for output in request.outputs:
        if output.name not in names:
            raise ProtocolError(
                400,
                f"output {output.name!r} is not an output of this model; expected one of "
                f"{', '.join(names)}",
            )
        parameters = output.parameters or {}
        for parameter in UNSUPPORTED_PARAMETERS:
            if parameter in parameters:
                raise ProtocolError(400, f"parameter {parameter!r} is not supported here")
        wanted[output.name] = bool(parameters.get("binary_data", every))
    return wanted


def response_body(
    model: str, version: int, request_id: str | None, outputs: dict[str, tuple[Array, bool]]
) -> tuple[bytes, dict[str, str]]:
    """The response: JSON, or its JSON header and the binary outputs, with the headers that
    say which (Content-Type, and Inference-Header-Content-Length when binary data follows)."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, (array, binary) in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if binary:
            blob = np.ascontiguousarray(array, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": str(version)}
    if request_id is not None:
        head["id"] = request_id
    head["outputs"] = entries
    header = json.dumps(head, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    headers = {"Content-Type": BINARY_MEDIA_TYPE, HEADER_LENGTH: str(len(header))}
    return header + b"".join(blobs), headers


def _first(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error.get("loc", ())) or "body"
    return f"{where}: {error.get('msg', 'invalid')}"

"""`manifest.json` of a model version, parsed and checked against docs/model-repository.md."""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from service.model.files import UnreadableFileError, read_regular

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "vae-mnist-manifest/1"
BATCH_AXIS = "batch"
# Checked before parsing: a published manifest is ~3 KB and 5 levels deep. Past these, a
# manifest is hostile or broken (200,000 nested arrays overflow json's recursion).
MAX_MANIFEST_BYTES = 2**20
MAX_MANIFEST_DEPTH = 32
MAX_FILE_NAME_BYTES = 255  # NAME_MAX on Linux
Shape = tuple[str | int, ...]

_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # backslash + the character it escapes
_STRING = re.compile(rb'"[^"]*"')  # a whole string, once escapes are gone
_NESTING = np.zeros(256, np.int32)  # what each byte does to the depth
_NESTING[list(b"[{")], _NESTING[list(b"]}")] = 1, -1


class ManifestError(ValueError):
    """The manifest is missing, unreadable, or disagrees with the contract."""


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph as the manifest declares it."""

    file: str
    sha256: str
    inputs: dict[str, Shape]
    outputs: dict[str, Shape]


@dataclass(frozen=True)
class FileSpec:
    """A file of the version other than a graph, as the manifest lists it."""

    file: str
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The fields the service relies on, plus the whole document to report as it is."""

    version: int
    latent_dim: int
    image_shape: tuple[int, int]
    binarize_threshold: float
    encoder: GraphSpec
    decoder: GraphSpec
    reconstruct: GraphSpec | None  # optional: x -> mu, logvar, probs of decoding mu
    document: dict[str, Any]
    density: FileSpec | None = None  # optional: the fitted latent density (service.model.density)

    @property
    def pixels(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    @property
    def graphs(self) -> dict[str, GraphSpec]:
        """The graphs this version has, by name: encoder, decoder, and reconstruct if any."""
        present = {"encoder": self.encoder, "decoder": self.decoder}
        if self.reconstruct is not None:
            present["reconstruct"] = self.reconstruct
        return present


def read_manifest(version_dir: Path) -> Manifest:
    """Parse `version_dir/manifest.json`; its version must equal the directory name.

    The size and the nesting depth are bounded before the JSON is parsed.
    """
    try:
        data = read_regular(version_dir / MANIFEST_FILE, MAX_MANIFEST_BYTES)
    except UnreadableFileError as exc:
        raise ManifestError(f"{MANIFEST_FILE}: {exc}") from exc
    depth = json_depth(data)
    if depth > MAX_MANIFEST_DEPTH:
        raise ManifestError(
            f"{MANIFEST_FILE} nests arrays and objects {depth} deep; the limit is "
            f"{MAX_MANIFEST_DEPTH}"
        )
    try:
        document = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError: no path in either
        raise ManifestError(f"{MANIFEST_FILE} is not readable JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ManifestError(f"{MANIFEST_FILE} must hold a JSON object")
    manifest = parse_manifest(document)
    if str(manifest.version) != version_dir.name:
        raise ManifestError(
            f"manifest version {manifest.version} does not match directory {version_dir.name!r}"
        )
    return manifest


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in the JSON text `data`, in linear time.

    Escapes go first (so every quote left delimits a string), then strings; the brackets
    left are counted. Text that is not JSON may be over-counted, never under. 1 MiB of
    hostile text takes 0.1-0.4 s.
    """
    outside = _STRING.sub(b"", _ESCAPE.sub(b"", data))
    return int(np.cumsum(_NESTING[np.frombuffer(outside, np.uint8)]).max(initial=0))


def parse_manifest(document: dict[str, Any]) -> Manifest:
    """Check the relied-on fields and that the declared graph shapes agree with them."""
    if document.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"format must be {MANIFEST_FORMAT!r}, got {document.get('format')!r}")
    version = _version(document)
    latent_dim = _positive_int(document, "latent_dim")
    image_shape = _image_shape(document.get("image_shape"))
    graphs = document.get("graphs")
    if not isinstance(graphs, dict):
        raise ManifestError(
            "graphs must be an object with 'encoder', 'decoder' and optionally 'reconstruct'"
        )
    manifest = Manifest(
        version=version,
        latent_dim=latent_dim,
        image_shape=image_shape,
        binarize_threshold=_threshold(document.get("preprocessing")),
        encoder=_graph(graphs, "encoder"),
        decoder=_graph(graphs, "decoder"),
        reconstruct=_graph(graphs, "reconstruct") if "reconstruct" in graphs else None,
        document=document,
        density=_density(document.get("density")),
    )
    _check_declared_shapes(manifest)
    return manifest


def expected_signatures(manifest: Manifest) -> dict[str, tuple[dict[str, Shape], dict[str, Shape]]]:
    """The signatures the contract requires of this version's graphs (the reconstruct graph's
    only when it has one), from latent_dim and image_shape."""
    pixels: Shape = (BATCH_AXIS, manifest.pixels)
    latent: Shape = (BATCH_AXIS, manifest.latent_dim)
    signatures = {
        "encoder": ({"x": pixels}, {"mu": latent, "logvar": latent}),
        "decoder": ({"z": latent}, {"logits": pixels, "probs": pixels}),
    }
    if manifest.reconstruct is not None:
        signatures["reconstruct"] = (
            {"x": pixels},
            {"mu": latent, "logvar": latent, "probs": pixels},
        )
    return signatures


def _check_declared_shapes(manifest: Manifest) -> None:
    expected = expected_signatures(manifest)
    for name, spec in manifest.graphs.items():
        inputs, outputs = expected[name]
        if spec.inputs != inputs or spec.outputs != outputs:
            raise ManifestError(
                f"graphs.{name} declares inputs {spec.inputs} and outputs {spec.outputs}, "
                f"but latent_dim={manifest.latent_dim} and image_shape="
                f"{list(manifest.image_shape)} require {inputs} and {outputs}"
            )


def _version(document: dict[str, Any]) -> int:
    """Non-negative: 0 is the embedded default model, published versions count from 1."""
    value = document.get("version")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"version must be a non-negative integer, got {value!r}")
    return value


def _positive_int(document: dict[str, Any], key: str) -> int:
    value = document.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ManifestError(f"{key} must be a positive integer, got {value!r}")
    return value


def _image_shape(value: object) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ManifestError(f"image_shape must be [height, width], got {value!r}")
    return value[0], value[1]


def _threshold(preprocessing: object) -> float:
    value = preprocessing.get("binarize_threshold") if isinstance(preprocessing, dict) else None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value < 1
    ):
        raise ManifestError(
            f"preprocessing.binarize_threshold must be a number in (0, 1), got {value!r}"
        )
    return float(value)


def _graph(graphs: dict[str, Any], name: str) -> GraphSpec:
    spec = graphs.get(name)
    if not isinstance(spec, dict):
        problem = "is missing" if name not in graphs else f"must be an object, got {spec!r}"
        raise ManifestError(f"graphs.{name} {problem}")
    file = _file(spec, f"graphs.{name}")
    return GraphSpec(
        file=file.file,
        sha256=file.sha256,
        inputs=_signature(spec.get("inputs"), f"graphs.{name}.inputs"),
        outputs=_signature(spec.get("outputs"), f"graphs.{name}.outputs"),
    )


def _density(spec: object) -> FileSpec | None:
    """The optional `density` entry: absent or null in versions published without one."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ManifestError(f"density must be an object with file and sha256, got {spec!r}")
    return _file(spec, "density")


def _file(spec: dict[str, Any], where: str) -> FileSpec:
    file, sha = spec.get("file"), spec.get("sha256")
    if not _plain_file_name(file):
        raise ManifestError(f"{where}.file must be a plain file name, got {file!r}")
    if not isinstance(sha, str) or len(sha) != 64 or not set(sha) <= set(string.hexdigits):
        raise ManifestError(f"{where}.sha256 must be 64 hex digits, got {sha!r}")
    return FileSpec(file=file, sha256=sha.lower())


def _plain_file_name(value: object) -> TypeGuard[str]:
    """A name in the version's own directory: no separator, no NUL or other control
    character, not "." or "..", and short enough for the filesystem."""
    return (
        isinstance(value, str)
        and value not in ("", ".", "..")
        and Path(value).name == value
        and value.isprintable()
        and len(value.encode("utf-8", "surrogatepass")) <= MAX_FILE_NAME_BYTES
    )


def _signature(value: object, where: str) -> dict[str, Shape]:
    if not isinstance(value, dict) or not all(
        isinstance(shape, list) and all(isinstance(d, str | int) for d in shape)
        for shape in value.values()
    ):
        raise ManifestError(f"{where} must map tensor names to shapes, got {value!r}")
    return {str(name): tuple(shape) for name, shape in value.items()}

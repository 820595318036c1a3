"""Checkpoints: ``pyopt.save(path, obj)`` / ``pyopt.load(path)``, atomic and pickle-free.

The file is a ZIP archive (stored, uncompressed) holding

* ``pyopt.json``: ``{"format": "pyopt-checkpoint", "version": 1, "tree": T}`` where T
  encodes the object: ``{"dict": [[K, V], ...]}``, ``{"list": [...]}``,
  ``{"tuple": [...]}``, ``{"str": s}``, ``{"int": n}``, ``{"float": "repr"}`` (exact,
  ``inf``/``nan`` included), ``{"bool": b}``, ``{"none": null}`` and
  ``{"array": "arrays/<n>.npy"}``;
* ``arrays/<n>.npy``: each array in NumPy's ``.npy`` format, read back with
  ``allow_pickle=False`` (object arrays are refused on save).

Host and device arrays (CuPy, Numba, torch) are saved as NumPy copies and loaded as NumPy
arrays. Saving writes a temporary file in the target's directory, flushes it to disk and
renames it over the target, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from pyopt._backend import is_cuda_array, to_numpy

FORMAT, VERSION = "pyopt-checkpoint", 1
_MANIFEST = "pyopt.json"


def _encode(obj: Any, where: str, arrays: list[np.ndarray]) -> Any:
    if obj is None:
        return {"none": None}
    if isinstance(obj, bool | np.bool_):
        return {"bool": bool(obj)}
    if isinstance(obj, int | np.integer):
        return {"int": int(obj)}
    if isinstance(obj, float | np.floating):
        return {"float": repr(float(obj))}
    if isinstance(obj, str):
        return {"str": obj}
    if isinstance(obj, np.ndarray) or is_cuda_array(obj) or type(obj).__module__ == "torch":
        arr = to_numpy(obj)
        if arr.dtype.hasobject:
            raise TypeError(f"{where} is an object array, which cannot be saved without pickle")
        arrays.append(arr)
        return {"array": f"arrays/{len(arrays) - 1}.npy"}
    if isinstance(obj, dict):
        return {
            "dict": [
                [_encode(k, f"{where} key", arrays), _encode(v, f"{where}[{k!r}]", arrays)]
                for k, v in obj.items()
            ]
        }
    if isinstance(obj, list | tuple):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {kind: [_encode(v, f"{where}[{i}]", arrays) for i, v in enumerate(obj)]}
    raise TypeError(f"{where} has type {type(obj).__qualname__}, which pyopt.save cannot store")


def _decode(node: Any, archive: zipfile.ZipFile) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError(f"corrupt checkpoint: unexpected node {node!r:.80}")
    ((kind, value),) = node.items()
    if kind == "none":
        return None
    if kind in ("bool", "str"):
        return value
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "array":
        with archive.open(value) as f:
            return np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)
    if kind == "dict":
        return {_decode(k, archive): _decode(v, archive) for k, v in value}
    if kind == "list":
        return [_decode(v, archive) for v in value]
    if kind == "tuple":
        return tuple(_decode(v, archive) for v in value)
    raise ValueError(f"corrupt checkpoint: unknown node kind {kind!r}")


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` (nested dicts, lists, tuples, numbers, strings, None and arrays, such as
    an optimizer's ``state_dict()``) to ``path`` atomically.

    Raises:
        TypeError: ``obj`` holds something the format cannot store (named by its path);
            nothing is written.
    """
    arrays: list[np.ndarray] = []
    tree = _encode(obj, "obj", arrays)
    manifest = json.dumps({"format": FORMAT, "version": VERSION, "tree": tree})
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pyopt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
                archive.writestr(_MANIFEST, manifest)
                for i, arr in enumerate(arrays):
                    with archive.open(f"arrays/{i}.npy", "w", force_zip64=True) as member:
                        np.lib.format.write_array(member, arr, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load(path: str | os.PathLike) -> Any:
    """Read an object written by :func:`save` (arrays come back as NumPy arrays).

    Raises:
        ValueError: the file is not a pyopt checkpoint, or a newer format version.
    """
    try:
        archive = zipfile.ZipFile(os.fspath(path))
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{os.fspath(path)!r} is not a pyopt checkpoint ({exc})") from exc
    with archive:
        try:
            manifest = json.loads(archive.read(_MANIFEST))
        except KeyError as exc:
            raise ValueError(f"{os.fspath(path)!r} is not a pyopt checkpoint") from exc
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not a pyopt checkpoint")
        if manifest.get("version") != VERSION:
            raise ValueError(
                f"{os.fspath(path)!r} has checkpoint version {manifest.get('version')}; "
                f"this pyopt reads version {VERSION}"
            )
        return _decode(manifest["tree"], archive)

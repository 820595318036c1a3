"""Checkpoints: ``pyopt.save(path, obj)`` / ``pyopt.load(path)``, atomic and pickle-free.

The file is a ZIP archive (stored, uncompressed) holding

* ``pyopt.json``: ``{"format": "pyopt-checkpoint", "version": 1, "tree": T}`` where T
  encodes the object: ``{"dict": [[K, V], ...]}``, ``{"list": [...]}``,
  ``{"tuple": [...]}``, ``{"str": s}``, ``{"int": n}``, ``{"float": "repr"}`` (exact,
  ``inf``/``nan`` included), ``{"bool": b}``, ``{"none": null}``,
  ``{"array": "arrays/<n>.npy"}`` and ``{"bfloat16": "arrays/<n>.npy"}`` (a bfloat16
  array, which ``.npy`` cannot describe, stored as its uint16 bits: exact, 2 bytes an
  element, loaded as ``ml_dtypes.bfloat16``);
* ``arrays/<n>.npy``: each array in NumPy's ``.npy`` format, read back with
  ``allow_pickle=False`` (object arrays are refused on save).

Containers nest at most :data:`MAX_DEPTH` levels deep (dict keys count as a level).

Host and device arrays (CuPy, Numba, torch) are saved as NumPy copies and loaded as NumPy
arrays. Saving writes a temporary file in the target's directory, flushes it to disk and
renames it over the target, so a crash mid-save leaves the previous checkpoint intact.

Loading trusts nothing in the file: every member must be stored (a deflated member is
refused before anything is inflated) with sizes that fit in the file, each ``.npy``
header must describe exactly the bytes its member holds (checked before the array is
allocated), and the ZIP CRC of every member read is verified, so a damaged or forged
file raises ValueError instead of allocating what it claims or returning altered data.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from pyopt._backend import is_cuda_array, to_numpy

FORMAT, VERSION = "pyopt-checkpoint", 1
# Deepest nesting of containers that save writes and load reads: deep enough for any
# state dict, shallow enough that neither recursion nor the JSON codec runs out of stack.
MAX_DEPTH = 256
_MANIFEST = "pyopt.json"
_ARRAYS = "arrays/"
# The JSON type of each node kind's value (exact types: a JSON true is no int).
_VALUE_TYPES = {
    "none": type(None),
    "bool": bool,
    "int": int,
    "float": str,
    "str": str,
    "array": str,
    "bfloat16": str,
    "dict": list,
    "list": list,
    "tuple": list,
}
# What zipfile raises on a damaged archive or member: bad magic numbers, CRC or names
# (BadZipFile), a name that is not UTF-8, a member cut short (EOFError) and an absurd
# "version needed to extract" (NotImplementedError).
_ZIP_ERRORS = (zipfile.BadZipFile, UnicodeDecodeError, EOFError, NotImplementedError)
# General-purpose flag bits pyopt never writes and zipfile cannot read past: encryption,
# compressed patched data, strong encryption.
_UNREADABLE_FLAGS = 0x01 | 0x20 | 0x40


def _encode(obj: Any, where: str, arrays: list[np.ndarray], depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"{where} is nested deeper than {MAX_DEPTH} levels")
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
        if arr.dtype == ml_dtypes.bfloat16:
            arrays.append(arr.view(np.uint16))
            return {"bfloat16": f"{_ARRAYS}{len(arrays) - 1}.npy"}
        descr = np.lib.format.dtype_to_descr(arr.dtype)
        if np.lib.format.descr_to_dtype(descr) != arr.dtype:
            raise TypeError(
                f"{where} has dtype {arr.dtype}, which the .npy format cannot store "
                f"(it would load as {descr!r})"
            )
        arrays.append(arr)
        return {"array": f"{_ARRAYS}{len(arrays) - 1}.npy"}
    if isinstance(obj, dict):
        return {
            "dict": [
                [
                    _encode(k, f"{where} key", arrays, depth + 1),
                    _encode(v, f"{where}[{k!r}]", arrays, depth + 1),
                ]
                for k, v in obj.items()
            ]
        }
    if isinstance(obj, list | tuple):
        kind = "list" if isinstance(obj, list) else "tuple"
        return {kind: [_encode(v, f"{where}[{i}]", arrays, depth + 1) for i, v in enumerate(obj)]}
    raise TypeError(f"{where} has type {type(obj).__qualname__}, which pyopt.save cannot store")


def _short(value: Any) -> str:
    """``repr(value)``, cut to a length that fits in an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Reader:
    """One checkpoint being loaded: its archive, its checked members and the arrays read."""

    def __init__(self, path: str, archive: zipfile.ZipFile, file_size: int):
        self.path = path
        self.archive = archive
        self.members = self._check_members(file_size)
        self.arrays_read: set[str] = set()

    def corrupt(self, what: str) -> ValueError:
        return ValueError(f"corrupt checkpoint {self.path!r}: {what}")

    def _check_members(self, file_size: int) -> dict[str, zipfile.ZipInfo]:
        """The archive's members by name, once each is known to be readable without
        inflating anything or reading past the end of the file."""
        members: dict[str, zipfile.ZipInfo] = {}
        for info in self.archive.infolist():
            name = _short(info.filename)
            if info.filename in members:
                raise self.corrupt(f"member {name} appears twice")
            if info.compress_type != zipfile.ZIP_STORED:
                raise self.corrupt(
                    f"member {name} is compressed (method {info.compress_type}); pyopt "
                    "checkpoints store their members uncompressed"
                )
            if info.flag_bits & _UNREADABLE_FLAGS:
                raise self.corrupt(f"member {name} is encrypted or patched")
            if info.file_size != info.compress_size:
                raise self.corrupt(
                    f"member {name} is stored but declares {info.file_size} bytes "
                    f"uncompressed and {info.compress_size} compressed"
                )
            if info.header_offset < 0:
                raise self.corrupt(f"member {name} starts before the start of the file")
            end = info.header_offset + zipfile.sizeFileHeader + info.compress_size
            if end > file_size:
                raise self.corrupt(
                    f"member {name} declares {info.compress_size} bytes at offset "
                    f"{info.header_offset}, past the end of the {file_size}-byte file"
                )
            members[info.filename] = info
        return members

    def read_member(self, info: zipfile.ZipInfo) -> bytes:
        try:
            return self.archive.read(info)
        except _ZIP_ERRORS as exc:
            raise self.corrupt(f"member {_short(info.filename)}: {exc}") from exc

    def manifest_tree(self) -> Any:
        """The ``tree`` of the manifest, once its format and version are known to be ours."""
        info = self.members.get(_MANIFEST)
        if info is None:
            raise ValueError(f"{self.path!r} is not a pyopt checkpoint (no {_MANIFEST})")
        text = self.read_member(info)
        try:
            manifest = json.loads(text.decode("utf-8"))
        except ValueError as exc:  # not UTF-8, not JSON, or an integer of >4300 digits
            raise self.corrupt(f"{_MANIFEST} is not valid JSON ({exc})") from exc
        except RecursionError as exc:
            raise self.corrupt(f"{_MANIFEST} is nested too deeply to parse") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{self.path!r} is not a pyopt checkpoint")
        version = manifest.get("version")
        if type(version) is not int or version != VERSION:
            raise ValueError(
                f"{self.path!r} has checkpoint version {_short(version)}; "
                f"this pyopt reads version {VERSION}"
            )
        if "tree" not in manifest:
            raise self.corrupt(f"{_MANIFEST} has no tree")
        return manifest["tree"]

    def decode(self, node: Any, where: str, depth: int) -> Any:
        """The object ``node`` encodes; ``where`` names it in error messages."""
        if depth > MAX_DEPTH:
            raise self.corrupt(f"{where} is nested deeper than {MAX_DEPTH} levels")
        if type(node) is not dict or len(node) != 1:
            raise self.corrupt(f"{where} is not a one-key node: {_short(node)}")
        ((kind, value),) = node.items()
        expected = _VALUE_TYPES.get(kind)
        if expected is None:
            raise self.corrupt(f"{where} has unknown node kind {_short(kind)}")
        if type(value) is not expected:
            raise self.corrupt(
                f"the {kind!r} node at {where} holds {type(value).__name__}, "
                f"not {expected.__name__}"
            )
        if kind in ("none", "bool", "int", "str"):
            return value
        if kind == "float":
            try:
                return float(value)
            except ValueError as exc:
                raise self.corrupt(
                    f"the 'float' node at {where} holds {_short(value)}, not a float's repr"
                ) from exc
        if kind == "array":
            return self.array(value, where)
        if kind == "bfloat16":
            bits = self.array(value, where)
            if bits.dtype != np.uint16:
                raise self.corrupt(f"the bfloat16 array at {where} is stored as {bits.dtype}")
            return bits.view(ml_dtypes.bfloat16)
        if kind == "dict":
            return self.decode_dict(value, where, depth)
        items = []
        for i, item in enumerate(value):
            items.append(self.decode(item, f"{where}[{i}]", depth + 1))
        return items if kind == "list" else tuple(items)

    def decode_dict(self, pairs: list[Any], where: str, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for i, pair in enumerate(pairs):
            if type(pair) is not list or len(pair) != 2:
                raise self.corrupt(f"{where} entry {i} is not a [key, value] pair")
            key = self.decode(pair[0], f"{where} key {i}", depth + 1)
            try:
                hash(key)
            except TypeError as exc:
                raise self.corrupt(f"{where} key {i} is unhashable ({type(key).__name__})") from exc
            if key in out:
                raise self.corrupt(f"{where} has the key {_short(key)} twice")
            out[key] = self.decode(pair[1], f"{where}[{_short(key)}]", depth + 1)
        return out

    def array(self, name: str, where: str) -> np.ndarray:
        """The array in member ``name``, its header checked against the member's size
        before the array is allocated."""
        if not name.startswith(_ARRAYS):
            raise self.corrupt(f"{where} names the member {_short(name)}, outside {_ARRAYS}")
        info = self.members.get(name)
        if info is None:
            raise self.corrupt(f"{where} names the member {_short(name)}, which is missing")
        if name in self.arrays_read:
            raise self.corrupt(f"{where} names the member {_short(name)} a second time")
        self.arrays_read.add(name)
        try:
            with self.archive.open(info) as f:
                shape, dtype = _npy_header(f)
                data_offset = f.tell()
            if dtype.hasobject:
                raise ValueError(f"dtype {dtype} holds Python objects, which need pickle")
            if any(extent < 0 for extent in shape):
                raise ValueError(f"the header's shape {shape} has a negative extent")
            nbytes = math.prod(shape) * dtype.itemsize
            if data_offset + nbytes != info.file_size:
                raise ValueError(
                    f"the header describes {shape} {dtype} ({nbytes} bytes) but the member "
                    f"holds {info.file_size - data_offset} bytes of data"
                )
            with self.archive.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, *_ZIP_ERRORS) as exc:
            raise self.corrupt(f"{where}, member {_short(name)}: {exc}") from exc


def _npy_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype in the ``.npy`` header at the start of ``f``, leaving ``f`` at
    the first data byte.

    Raises:
        ValueError: the header is malformed or of an unknown format version.
    """
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        read_header = np.lib.format.read_array_header_1_0
    elif version in ((2, 0), (3, 0)):
        # Version 3.0 is 2.0 with a UTF-8 header (NumPy writes it for non-Latin-1 field
        # names). Read as Latin-1, like 2.0, such names come out garbled (UTF-8 never
        # holds the bytes of a quote, a backslash or a newline, so the header parses
        # alike), and the shape and itemsize checked here are the same; read_array then
        # reads the header properly.
        read_header = np.lib.format.read_array_header_2_0
    else:
        raise ValueError(f"unknown .npy format version {version}")
    try:
        shape, _, dtype = read_header(f)
    except (RecursionError, MemoryError) as exc:
        # What Python's parser raises on a header of a few thousand nested operators
        # (NumPy caps headers at 10000 characters, so no real shortage of memory).
        raise ValueError("the .npy header is nested too deeply to parse") from exc
    return shape, dtype


def _path(path: Any) -> str:
    """``path`` as a str; TypeError naming ``path`` for anything else."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def save(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` (nested dicts, lists, tuples, numbers, strings, None and arrays, such as
    an optimizer's ``state_dict()``) to ``path`` atomically.

    Args:
        path: the file to write (replaced if it exists).
        obj: the object to store; containers nest at most :data:`MAX_DEPTH` levels.

    Raises:
        TypeError: ``obj`` holds something the format cannot store (named by its path):
            an object of another type, an object array, or a dtype the ``.npy`` format
            cannot describe (bfloat16 is stored as its bits); nothing is written.
        ValueError: ``obj`` nests deeper than :data:`MAX_DEPTH` (or holds itself);
            nothing is written.
        TypeError: ``path`` is not a str or ``os.PathLike``.

    Example:
        >>> import os, tempfile
        >>> import numpy as np
        >>> import pyopt
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "ck.pyopt")
        ...     pyopt.save(path, {"step": 3, "exp_avg": np.zeros(2, np.float32)})
        ...     pyopt.load(path)["step"]
        3
    """
    arrays: list[np.ndarray] = []
    tree = _encode(obj, "obj", arrays, 0)
    manifest = json.dumps({"format": FORMAT, "version": VERSION, "tree": tree})
    path = _path(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".pyopt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as archive:
                archive.writestr(_MANIFEST, manifest)
                for i, arr in enumerate(arrays):
                    with archive.open(f"{_ARRAYS}{i}.npy", "w", force_zip64=True) as member:
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

    Only the members the manifest names are read, each checked (stored, sizes within the
    file, ``.npy`` header matching the member's size, ZIP CRC) before and while reading.

    Args:
        path: a file written by :func:`save`.

    Returns:
        The saved object: dicts, lists, tuples, ints, floats, bools, strings, None and
        NumPy arrays.

    Raises:
        ValueError: the file is not a pyopt checkpoint, is of a newer format version, or
            is damaged in any way (not a ZIP archive, truncated, a compressed, oversized,
            missing or repeated member, a CRC mismatch, a malformed manifest or tree, a
            nesting deeper than :data:`MAX_DEPTH`, a bad ``.npy`` header or an object
            array); the message says what is wrong and where.
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory (PermissionError on Windows).
        OSError: the file cannot be read (permissions, I/O errors).
        TypeError: ``path`` is not a str or ``os.PathLike``.
    """
    path = _path(path)
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        try:
            archive = zipfile.ZipFile(file)
        except _ZIP_ERRORS as exc:
            raise ValueError(f"{path!r} is not a pyopt checkpoint ({exc})") from exc
        with archive:
            reader = _Reader(path, archive, file_size)
            return reader.decode(reader.manifest_tree(), "obj", 0)

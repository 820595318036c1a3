"""pyopt.save / pyopt.load: exact round trips, atomic writes, no pickle, damaged or forged
files refused with ValueError (before allocating what they claim), and optimizer runs
resumed in a fresh process continuing bit for bit."""

from __future__ import annotations

import io
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import CUDASIM, cuda_skip_reason

import pyopt
from pyopt import optim
from pyopt._io import MAX_DEPTH

TESTS = Path(__file__).parent


def test_round_trip_is_exact(tmp_path):
    obj = {
        "state": {0: {"step": 7, "exp_avg": np.arange(6, dtype=np.float32).reshape(2, 3)}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0], "name": "x"}],
        "floats": [math.inf, -math.inf, 1 / 3, -0.0, 5e-324],
        "misc": (None, True, False, 2**70, "ü"),
        "arrays": [np.zeros(0), np.array(2.5), np.array([1, 2], np.int64)],
        "nan": math.nan,
    }
    path = tmp_path / "ck.pyopt"
    pyopt.save(path, obj)
    back = pyopt.load(path)
    assert back["state"][0]["step"] == 7 and list(back["state"]) == [0]
    np.testing.assert_array_equal(back["state"][0]["exp_avg"], obj["state"][0]["exp_avg"])
    assert back["state"][0]["exp_avg"].dtype == np.float32
    assert back["param_groups"] == obj["param_groups"]
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert back["floats"][:2] == [math.inf, -math.inf]
    assert back["floats"][2] == 1 / 3 and math.copysign(1, back["floats"][3]) == -1
    assert back["floats"][4] == 5e-324
    assert back["misc"] == obj["misc"]
    for a, b in zip(back["arrays"], obj["arrays"], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert math.isnan(back["nan"])


def test_file_is_a_documented_zip_without_pickle(tmp_path):
    path = tmp_path / "ck.pyopt"
    pyopt.save(path, {"w": np.ones(3)})
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["arrays/0.npy", "pyopt.json"]
        manifest = json.loads(archive.read("pyopt.json"))
        assert manifest["format"] == "pyopt-checkpoint" and manifest["version"] == 1
        with archive.open("arrays/0.npy") as f:
            np.testing.assert_array_equal(np.load(f, allow_pickle=False), np.ones(3))


def test_unstorable_objects_are_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "ck.pyopt"
    with pytest.raises(TypeError, match=r"obj\['bad'\]"):
        pyopt.save(path, {"bad": object()})
    with pytest.raises(TypeError, match="object array"):
        pyopt.save(path, {"bad": np.array([None, 1], dtype=object)})
    assert list(tmp_path.iterdir()) == []


def test_a_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pyopt"
    pyopt.save(path, {"version": 1, "w": np.ones(4)})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", crash)
    with pytest.raises(OSError, match="disk full"):
        pyopt.save(path, {"version": 2, "w": np.zeros(4)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pyopt"], "no temporary file is left"
    assert pyopt.load(path)["version"] == 1


def test_load_rejects_files_that_are_not_checkpoints(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a pyopt checkpoint"):
        pyopt.load(junk)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("pyopt.json", json.dumps({"format": "pyopt-checkpoint", "version": 99}))
    with pytest.raises(ValueError, match="version 99"):
        pyopt.load(other)


def test_save_refuses_dtypes_the_npy_format_cannot_describe(tmp_path):
    import ml_dtypes

    path = tmp_path / "ck.pyopt"
    with pytest.raises(TypeError, match=r"obj\['w'\] has dtype float8_e4m3fn"):
        pyopt.save(path, {"w": np.zeros(3, ml_dtypes.float8_e4m3fn)})
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_and_float16_arrays_round_trip_bit_for_bit(tmp_path):
    import ml_dtypes

    bits = np.arange(65536, dtype=np.uint16)  # every pattern: NaN payloads, -0, subnormals
    obj = {"bf16": bits.view(ml_dtypes.bfloat16).reshape(256, 256), "f16": bits.view(np.float16)}
    path = tmp_path / "ck.pyopt"
    pyopt.save(path, obj)
    back = pyopt.load(path)
    assert back["bf16"].dtype == ml_dtypes.bfloat16 and back["bf16"].shape == (256, 256)
    assert back["f16"].dtype == np.float16
    np.testing.assert_array_equal(back["bf16"].view(np.uint16).ravel(), bits)
    np.testing.assert_array_equal(back["f16"].view(np.uint16), bits)
    with zipfile.ZipFile(path) as archive:  # 2 bytes an element, not a float32 copy
        assert archive.getinfo("arrays/0.npy").file_size < 65536 * 2 + 256


def _nested(depth):
    """A list nested ``depth`` levels below the outermost one, holding 0 at the bottom."""
    obj = [0]
    for _ in range(depth):
        obj = [obj]
    return obj


def test_nesting_up_to_max_depth_round_trips_and_deeper_is_refused(tmp_path):
    path = tmp_path / "ck.pyopt"
    deepest = {"k": _nested(MAX_DEPTH - 2)}  # the int inside sits at depth MAX_DEPTH
    pyopt.save(path, deepest)
    assert pyopt.load(path) == deepest
    with pytest.raises(ValueError, match=f"nested deeper than {MAX_DEPTH}"):
        pyopt.save(tmp_path / "deep.pyopt", {"k": _nested(MAX_DEPTH - 1)})
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match=r"obj(\[0\])+ is nested deeper"):
        pyopt.save(tmp_path / "loop.pyopt", loop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pyopt"]


@pytest.mark.filterwarnings("ignore:Stored array in format 3.0:UserWarning")
def test_npy_format_3_members_load(tmp_path):
    """NumPy writes format 3.0 (a UTF-8 header) for non-Latin-1 field names."""
    arr = np.array([(1.5, 2), (-0.0, 7)], dtype=[("λ", "<f4"), ("b", "<i2")])
    path = tmp_path / "ck.pyopt"
    pyopt.save(path, {"s": arr})
    with zipfile.ZipFile(path) as archive:
        assert archive.read("arrays/0.npy")[6:8] == b"\x03\x00"
    back = pyopt.load(path)["s"]
    assert back.dtype == arr.dtype and back.dtype.names == ("λ", "b")
    np.testing.assert_array_equal(back, arr)


def test_load_of_a_missing_file_or_a_directory_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        pyopt.load(tmp_path / "absent.pyopt")
    with pytest.raises(IsADirectoryError if os.name != "nt" else PermissionError):
        pyopt.load(tmp_path)


# --- damaged and forged files: ValueError, and nothing else --------------------------

# A checkpoint with every node kind and two arrays (one Fortran-ordered, one 0-d).
ORIGINAL = {
    "state": {0: {"step": 3, "exp_avg": np.arange(6, dtype=np.float32).reshape(2, 3)}},
    "groups": [{"lr": 0.5, "betas": (0.9, 0.99), "flag": True, "none": None, "s": "x"}],
    "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    "scalar": np.array(7, np.int16),
}


def _same(a, b):
    """Whether ``a`` and ``b`` are equal objects of the same types, arrays included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.fixture(scope="module")
def original_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "ck.pyopt"
    pyopt.save(path, ORIGINAL)
    return path.read_bytes()


def _data_offset(data, name):
    """Offset in ``data`` of member ``name``'s first byte (after its local header)."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(name)
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def _cut(data, name, count):
    """``data`` less ``count`` bytes from the middle of member ``name``'s data (the
    central directory kept)."""
    start = _data_offset(data, name) + 8
    return data[:start] + data[start + count :]


def _flip(data, offset):
    out = bytearray(data)
    out[offset] ^= 0xFF
    return bytes(out)


# Fields of a central directory record: offset in the record and struct format.
_CD_FIELDS = {
    "flag_bits": (8, "<H"),
    "compress_type": (10, "<H"),
    "compress_size": (20, "<I"),
    "file_size": (24, "<I"),
    "header_offset": (42, "<I"),
}


def _patch_central(data, name, **fields):
    """``data`` with fields of member ``name``'s central directory record replaced."""
    out = bytearray(data)
    pos = zipfile.ZipFile(io.BytesIO(data)).start_dir
    while True:
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", out, pos + 28)
        if out[pos + 46 : pos + 46 + name_len] == name.encode():
            break
        pos += 46 + name_len + extra_len + comment_len
    for field, value in fields.items():
        offset, fmt = _CD_FIELDS[field]
        struct.pack_into(fmt, out, pos + offset, value)
    return bytes(out)


def _zip(*members, compression=zipfile.ZIP_STORED):
    """A ZIP archive (valid CRCs) of ``(name, bytes)`` members."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name", on purpose
        with zipfile.ZipFile(buf, "w", compression=compression) as archive:
            for name, payload in members:
                archive.writestr(name, payload)
    return buf.getvalue()


def _manifest_text(tree):
    return json.dumps({"format": "pyopt-checkpoint", "version": 1, "tree": tree})


def _manifest(tree, *arrays):
    """A well-formed archive around ``tree``, with ``arrays`` as arrays/<i>.npy."""
    members = [(f"arrays/{i}.npy", a) for i, a in enumerate(arrays)]
    return _zip(("pyopt.json", _manifest_text(tree)), *members)


def _npy(arr):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npy_with_header(header, data=b"", version=1):
    """A .npy member with the header text ``header`` (any text) followed by ``data``."""
    length = struct.pack("<H" if version == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + length + header.encode("latin1") + data


def _header(shape, descr="<f4"):
    return f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}\n"


ARRAY = {"array": "arrays/0.npy"}
F32 = np.arange(4, dtype=np.float32)


def _nested_tree(depth):
    tree = {"int": 0}
    for _ in range(depth):
        tree = {"list": [tree]}
    return tree


# Each row: id and a function of the real checkpoint's bytes giving the damaged file.
CORRUPTIONS = [
    ("empty file", lambda d: b""),
    ("not a zip", lambda d: b"not a zip file at all" * 10),
    ("zip without manifest", lambda d: _zip(("other.txt", b"hello"))),
    *[(f"truncated to {k}/16", lambda d, k=k: d[: len(d) * k // 16]) for k in range(1, 16)],
    ("truncated by 1 byte", lambda d: d[:-1]),
    ("truncated by 22 bytes (no end record)", lambda d: d[:-22]),
    *[
        (f"member data cut by {k} bytes", lambda d, k=k: _cut(d, "arrays/0.npy", k))
        for k in (1, 16, 100)
    ],
    (
        "truncated inside the central directory",
        lambda d: d[: zipfile.ZipFile(io.BytesIO(d)).start_dir + 10],
    ),
    ("manifest byte flipped", lambda d: _flip(d, _data_offset(d, "pyopt.json") + 5)),
    ("npy magic flipped", lambda d: _flip(d, _data_offset(d, "arrays/0.npy"))),
    ("npy header byte flipped", lambda d: _flip(d, _data_offset(d, "arrays/0.npy") + 20)),
    ("array data byte flipped", lambda d: _flip(d, _data_offset(d, "arrays/0.npy") + 130)),
    (
        "central directory signature flipped",
        lambda d: _flip(d, zipfile.ZipFile(io.BytesIO(d)).start_dir),
    ),
    ("central name flipped", lambda d: _flip(d, zipfile.ZipFile(io.BytesIO(d)).start_dir + 48)),
    ("end record flipped", lambda d: _flip(d, len(d) - 10)),
    (
        "member deflated (declared)",
        lambda d: _patch_central(d, "arrays/0.npy", compress_type=zipfile.ZIP_DEFLATED),
    ),
    ("member encrypted", lambda d: _patch_central(d, "pyopt.json", flag_bits=1)),
    ("sizes disagree", lambda d: _patch_central(d, "arrays/0.npy", file_size=10**6)),
    (
        "size past the end",
        lambda d: _patch_central(d, "pyopt.json", file_size=2**32 - 2, compress_size=2**32 - 2),
    ),
    (
        "header offset past the end",
        lambda d: _patch_central(d, "arrays/0.npy", header_offset=2**32 - 2),
    ),
    ("header offset at the manifest", lambda d: _patch_central(d, "arrays/0.npy", header_offset=0)),
    ("duplicate member names", lambda d: _zip(("pyopt.json", b"{}"), ("pyopt.json", b"{}"))),
    # manifests
    ("manifest not UTF-8", lambda d: _zip(("pyopt.json", b"\xff\xfe{}"))),
    ("manifest not JSON", lambda d: _zip(("pyopt.json", b'{"format": '))),
    ("manifest a list", lambda d: _zip(("pyopt.json", b"[1, 2]"))),
    ("manifest nested too deeply", lambda d: _zip(("pyopt.json", b"[" * 100_000 + b"]" * 100_000))),
    ("manifest huge integer", lambda d: _zip(("pyopt.json", b'{"version": ' + b"9" * 5000 + b"}"))),
    (
        "manifest without tree",
        lambda d: _zip(("pyopt.json", b'{"format": "pyopt-checkpoint", "version": 1}')),
    ),
    (
        "version a bool",
        lambda d: _zip(
            (
                "pyopt.json",
                b'{"format": "pyopt-checkpoint", "version": true, "tree": {"none": null}}',
            )
        ),
    ),
    # trees of the wrong shape
    ("tree deeper than MAX_DEPTH", lambda d: _manifest(_nested_tree(MAX_DEPTH + 1))),
    ("node not an object", lambda d: _manifest(5)),
    ("node with two keys", lambda d: _manifest({"int": 1, "str": "a"})),
    ("node with no key", lambda d: _manifest({})),
    ("unknown node kind", lambda d: _manifest({"set": []})),
    ("none holding 0", lambda d: _manifest({"none": 0})),
    ("bool holding 1", lambda d: _manifest({"bool": 1})),
    ("int holding true", lambda d: _manifest({"int": True})),
    ("int holding a float", lambda d: _manifest({"int": 1.5})),
    ("int holding a string", lambda d: _manifest({"int": "1"})),
    ("float holding a number", lambda d: _manifest({"float": 1.5})),
    ("float holding junk", lambda d: _manifest({"float": "one"})),
    ("str holding a number", lambda d: _manifest({"str": 5})),
    ("array holding a number", lambda d: _manifest({"array": 0}, _npy(F32))),
    ("dict holding an object", lambda d: _manifest({"dict": {}})),
    ("dict entry not a pair", lambda d: _manifest({"dict": [[{"int": 1}]]})),
    ("dict entry not a list", lambda d: _manifest({"dict": [{"int": 1}]})),
    ("dict key unhashable", lambda d: _manifest({"dict": [[{"list": []}, {"int": 1}]]})),
    (
        "dict key a tuple holding a list",
        lambda d: _manifest({"dict": [[{"tuple": [{"list": []}]}, {"int": 1}]]}),
    ),
    (
        "dict key twice",
        lambda d: _manifest({"dict": [[{"int": 1}, {"int": 1}], [{"int": 1}, {"int": 2}]]}),
    ),
    ("list holding an object", lambda d: _manifest({"list": {}})),
    ("tuple holding a string", lambda d: _manifest({"tuple": "ab"})),
    # array members
    ("array member missing", lambda d: _manifest({"array": "arrays/9.npy"}, _npy(F32))),
    ("array member named twice", lambda d: _manifest({"list": [ARRAY, ARRAY]}, _npy(F32))),
    ("array member is the manifest", lambda d: _manifest({"array": "pyopt.json"})),
    (
        "array member outside arrays/",
        lambda d: _zip(
            ("pyopt.json", _manifest_text({"array": "other/0.npy"})), ("other/0.npy", _npy(F32))
        ),
    ),
    ("object array", lambda d: _manifest(ARRAY, _npy(np.array([None, 1], dtype=object)))),
    ("npy not npy", lambda d: _manifest(ARRAY, b"PK\x03\x04 not an array")),
    ("npy empty", lambda d: _manifest(ARRAY, b"")),
    (
        "npy unknown version",
        lambda d: _manifest(ARRAY, _npy_with_header(_header((4,)), F32.tobytes(), version=9)),
    ),
    (
        "npy header claims more",
        lambda d: _manifest(ARRAY, _npy_with_header(_header((5,)), F32.tobytes())),
    ),
    (
        "npy header claims less",
        lambda d: _manifest(ARRAY, _npy_with_header(_header((3,)), F32.tobytes())),
    ),
    (
        "npy negative shape",
        lambda d: _manifest(ARRAY, _npy_with_header(_header((-2, -2)), F32.tobytes())),
    ),
    (
        "npy shape not ints",
        lambda d: _manifest(ARRAY, _npy_with_header(_header(("4",)), F32.tobytes())),
    ),
    (
        "npy bad descr",
        lambda d: _manifest(ARRAY, _npy_with_header(_header((4,), descr="<q9"), F32.tobytes())),
    ),
    (
        "npy header not a dict",
        lambda d: _manifest(ARRAY, _npy_with_header("[1, 2]\n", F32.tobytes())),
    ),
    ("npy header not a literal", lambda d: _manifest(ARRAY, _npy_with_header("{'descr': open}\n"))),
    (
        "npy header nested operators",
        lambda d: _manifest(ARRAY, _npy_with_header("-" * 9000 + "1\n")),
    ),
    (
        "npy header nested inversions",
        lambda d: _manifest(ARRAY, _npy_with_header("~" * 5000 + "1\n")),
    ),
    (
        "npy header length past the member",
        lambda d: _manifest(
            ARRAY, _npy_with_header(_header((4,)), F32.tobytes(), version=2)[:12] + b"{"
        ),
    ),
    (
        "npy header claims 4 GiB",
        lambda d: _manifest(ARRAY, _npy_with_header(_header((2**30,)), F32.tobytes())),
    ),
]


@pytest.mark.parametrize("corrupt", [c for _, c in CORRUPTIONS], ids=[i for i, _ in CORRUPTIONS])
def test_damaged_or_forged_files_raise_value_error(tmp_path, original_bytes, corrupt):
    damaged = corrupt(original_bytes)
    assert damaged != original_bytes
    path = tmp_path / "ck.pyopt"
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match=r"checkpoint|version") as info:
        pyopt.load(path)
    assert str(path) in str(info.value), "the message names the file"


def test_messages_say_what_is_wrong_and_where(tmp_path):
    cases = [
        (
            {"dict": [[{"str": "lr"}, {"int": "1"}]]},
            r"the 'int' node at obj\['lr'\] holds str, not int",
        ),
        (
            {"list": [{"none": None}, {"tuple": [{"float": 2}]}]},
            r"the 'float' node at obj\[1\]\[0\] holds int, not str",
        ),
        ({"dict": [[{"list": []}, {"int": 1}]]}, r"obj key 0 is unhashable \(list\)"),
        ({"list": [ARRAY, ARRAY]}, r"obj\[1\] names the member 'arrays/0.npy' a second time"),
        (
            _nested_tree(MAX_DEPTH + 1),
            rf"obj(\[0\]){{{MAX_DEPTH + 1}}} is nested deeper than {MAX_DEPTH}",
        ),
    ]
    path = tmp_path / "ck.pyopt"
    for tree, message in cases:
        path.write_bytes(_manifest(tree, _npy(F32)))
        with pytest.raises(ValueError, match=message):
            pyopt.load(path)
    path.write_bytes(
        _manifest({"list": [ARRAY]}, _npy_with_header(_header((2**30,)), F32.tobytes()))
    )
    with pytest.raises(ValueError, match=r"obj\[0\], member 'arrays/0.npy': the header describes"):
        pyopt.load(path)


def _deflated_bomb():
    """A checkpoint whose one array member is deflated: 64 MiB of zeros in ~64 KiB."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pyopt.json", _manifest_text(ARRAY), compress_type=zipfile.ZIP_STORED)
        with archive.open("arrays/0.npy", "w", force_zip64=True) as member:
            zeros = np.zeros(2**20, np.float32)
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f4", "fortran_order": False, "shape": (2**24,)}
            )
            for _ in range(16):
                member.write(zeros.tobytes())
    return buf.getvalue()


# Small files declaring gigabytes: each must be refused before anything that size is made.
BOMBS = [
    ("deflated member", lambda d: _deflated_bomb()),
    (
        "stored sizes of 4 GiB",
        lambda d: _patch_central(d, "arrays/0.npy", file_size=2**32 - 2, compress_size=2**32 - 2),
    ),
    (
        "uncompressed size of 4 GiB",
        lambda d: _patch_central(d, "arrays/0.npy", file_size=2**32 - 2),
    ),
    (
        "npy header claiming 4 GiB",
        lambda d: _manifest(ARRAY, _npy_with_header(_header((2**30,)), F32.tobytes())),
    ),
    (
        "npy header claiming 2**80 bytes",
        lambda d: _manifest(ARRAY, _npy_with_header(_header((2**40, 2**38)), F32.tobytes())),
    ),
]


@pytest.mark.parametrize("bomb", [b for _, b in BOMBS], ids=[i for i, _ in BOMBS])
def test_huge_declared_sizes_fail_fast_without_allocating(tmp_path, original_bytes, bomb):
    path = tmp_path / "bomb.pyopt"
    path.write_bytes(bomb(original_bytes))
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="checkpoint"):
            pyopt.load(path)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 2**20, f"load allocated {peak} bytes for a file declaring gigabytes"


def test_random_damage_gives_the_original_or_value_error(tmp_path, original_bytes):
    """Every byte of the central directory and end record flipped in turn, then random
    flips anywhere and random truncations: load returns ORIGINAL or raises ValueError."""
    rng = np.random.default_rng(20240611)
    data = original_bytes
    start_dir = zipfile.ZipFile(io.BytesIO(data)).start_dir
    damaged = [_flip(data, i) for i in range(start_dir, len(data))]
    for _ in range(300):
        out = bytearray(data)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            out[pos] ^= int(rng.integers(1, 256))
        damaged.append(bytes(out))
    damaged += [data[: int(k)] for k in rng.integers(0, len(data), size=50)]
    path = tmp_path / "ck.pyopt"
    outcomes = {"original": 0, "ValueError": 0}
    for blob in damaged:
        path.write_bytes(blob)
        try:
            back = pyopt.load(path)
        except ValueError:
            outcomes["ValueError"] += 1
            continue
        assert _same(back, ORIGINAL)
        outcomes["original"] += 1
    # Most damage is caught; some (dates, attributes, unused local-header fields) is harmless.
    assert outcomes["ValueError"] > outcomes["original"] > 0


def test_unreferenced_members_are_never_read(tmp_path, monkeypatch):
    path = tmp_path / "ck.pyopt"
    path.write_bytes(_manifest({"int": 1}, _npy(F32), b"junk that is never parsed"))
    opened = []
    real_open = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    assert pyopt.load(path) == 1
    assert opened == ["pyopt.json"]


# --- resuming in a fresh process --------------------------------------------------

_RUN = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        import _cudasim
        _cudasim.install()
    import pyopt
    from pyopt import optim
    from pyopt._backend import copy_into, to_numpy

    name, kwargs, device = {name!r}, {kwargs!r}, {device!r}
    start, stop, path = {start}, {stop}, {path!r}
    shapes = [(3, 5), (7,), (1,), (33,)]
    buf = optim.ParamBuffer(shapes, dtype=np.float32, device=device)
    rng = np.random.default_rng(0)
    buf.load({{str(i): rng.standard_normal(s) for i, s in enumerate(shapes)}})
    opt = getattr(optim, name)(buf.params, **kwargs)
    if start:
        saved = pyopt.load(path)
        opt.load_state_dict(saved["optimizer"])
        buf.load(saved["params"])
    for t in range(start, stop):
        noise = np.random.default_rng([1, t])
        for i, s in enumerate(shapes):
            p = to_numpy(buf.params[str(i)])
            g = noise.standard_normal(s).astype(np.float32) + np.float32(0.5) * p
            copy_into(buf.grads[str(i)], g)
        opt.step(buf.grads, max_grad_norm=2.0)
    params = {{k: to_numpy(v) for k, v in buf.params.items()}}
    pyopt.save(path, {{"optimizer": opt.state_dict(), "params": params}})
    """
)

RESUME_CASES = [
    ("Adam", {"lr": 1e-2, "amsgrad": True}),
    ("AdamW", {"lr": 1e-2}),
    ("SGD", {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
    ("Adagrad", {"lr": 1e-2, "lr_decay": 1e-3}),
    ("RMSprop", {"lr": 1e-3, "centered": True, "momentum": 0.5}),
    ("Adadelta", {"weight_decay": 1e-2}),
]


def _run(tmp_path, device, name, kwargs, start, stop, path):
    code = _RUN.format(
        tests=str(TESTS),
        name=name,
        kwargs=kwargs,
        device=device,
        start=start,
        stop=stop,
        path=str(path),
    )
    env = dict(os.environ)
    if device == "cuda" and CUDASIM:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)


# Every rule on the CPU; on CUDA (three processes of simulator start-up each) the two
# whose state has the most parts: the save/load path is the same for all rules.
RESUME_RUNS = [("cpu", *case) for case in RESUME_CASES] + [
    pytest.param("cuda", *RESUME_CASES[0], marks=pytest.mark.sim),
    pytest.param("cuda", *RESUME_CASES[4], marks=pytest.mark.sim),
]


@pytest.mark.parametrize(("device", "name", "kwargs"), RESUME_RUNS)
def test_resume_in_a_fresh_process_is_bit_for_bit(tmp_path, device, name, kwargs):
    if device == "cuda" and cuda_skip_reason() is not None:
        pytest.skip(cuda_skip_reason())
    steps = 6 if device == "cuda" else 20
    whole, part = tmp_path / "whole.pyopt", tmp_path / "part.pyopt"
    _run(tmp_path, device, name, kwargs, 0, steps, whole)
    _run(tmp_path, device, name, kwargs, 0, steps // 2, part)
    _run(tmp_path, device, name, kwargs, steps // 2, steps, part)
    a, b = pyopt.load(whole), pyopt.load(part)
    for key in a["params"]:
        np.testing.assert_array_equal(a["params"][key], b["params"][key])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and sa
    for i in sa:
        assert sa[i]["step"] == sb[i]["step"] == steps
        for key in sa[i]:
            np.testing.assert_array_equal(sa[i][key], sb[i][key])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


def test_optimizer_state_dict_saves_and_loads(tmp_path):
    params = [np.ones((2, 2), np.float32), np.zeros(3, np.float32)]
    opt = optim.RMSprop(params, centered=True, momentum=0.9)
    opt.step([np.full((2, 2), 0.5, np.float32), np.ones(3, np.float32)])
    pyopt.save(tmp_path / "o.pyopt", opt.state_dict())
    other = optim.RMSprop([p.copy() for p in params], centered=True, momentum=0.9)
    other.load_state_dict(pyopt.load(tmp_path / "o.pyopt"))
    for i, entry in opt.state_dict()["state"].items():
        for key, value in entry.items():
            np.testing.assert_array_equal(other.state_dict()["state"][i][key], value)

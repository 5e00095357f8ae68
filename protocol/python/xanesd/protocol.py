#!/usr/bin/python3
"""Python mirror of the xanesd wire protocol, version 1 (protocol/PROTOCOL.md).

A message is a ZeroMQ multipart message:

    frame 0   topic, UTF-8
    frame 1   header: a msgpack map with string keys (always has `protocol` and `arrays`)
    frame 2…  one raw frame per entry of header["arrays"], in that order

This module agrees with the C++ reference implementation
(protocol/include/xanesd/protocol/{wire,messages}.hpp, protocol/src/*.cpp): decode()
accepts and rejects exactly what the C++ decode() does, and the ingest helpers
(start_message, frame_message, stop_message) write the same header fields as
StartMsg/FrameMsg/StopMsg::to_wire().

Only numpy and msgpack are needed to encode and decode; pyzmq is imported lazily by the
socket helpers (Client, subscribe, recv), so the codec also works without it.
"""

from __future__ import annotations

import json
import math
import numbers
import struct
import sys
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import msgpack
import numpy as np

PROTOCOL_VERSION = 1

__all__ = [
    "PROTOCOL_VERSION", "ProtocolError", "Message", "DTYPES", "encode", "decode",
    "encode_header", "decode_header", "split_messages", "start_message", "frame_message",
    "stop_message", "Client", "subscribe", "recv", "send", "write_frames_file",
    "read_frames_file",
]


class ProtocolError(Exception):
    """A message that does not follow PROTOCOL.md; the text names the offending field."""


# name -> itemsize, exactly the C++ kDTypes table.
DTYPES = {
    "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8,
    "int16": 2, "int32": 4, "int64": 8,
    "float32": 4, "float64": 8,
}

# Limits of the C++ decode_header(): a header is metadata, not data.
MAX_HEADER_BYTES = 1 << 20
MAX_DEPTH = 16
MAX_SHAPE_RANK = 8
_UNPACK_LIMITS = dict(max_array_len=1 << 16, max_map_len=1 << 12, max_str_len=1 << 16,
                      max_bin_len=1 << 16, max_ext_len=1 << 10)

_NATIVE = "<" if sys.byteorder == "little" else ">"


@dataclass
class Message:
    """A decoded message. `header` is the full header (including `protocol` and `arrays`);
    `arrays` maps each array name to a numpy array of the described dtype, byte order and
    shape (a read-only zero-copy view of the received frame where possible)."""

    topic: str
    header: dict
    arrays: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return self.header[key]

    def get(self, key, default=None):
        return self.header.get(key, default)

    def __repr__(self):
        arrs = ", ".join(f"{k}:{v.dtype.str}{list(v.shape)}" for k, v in self.arrays.items())
        keys = {k: v for k, v in self.header.items() if k != "arrays"}
        return f"Message(topic={self.topic!r}, header={keys!r}, arrays=[{arrs}])"


# ---------------------------------------------------------------------------------------
# Header codec


def _to_plain(obj):
    """msgpack `default` hook: numpy scalars/arrays in headers become plain Python values."""
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"header value of type {type(obj).__name__} cannot be encoded")


def encode_header(header: dict) -> bytes:
    """msgpack-packs a header map (str keys; numpy scalars are converted)."""
    if not isinstance(header, dict):
        raise ProtocolError("header must be a dict")
    try:
        return msgpack.packb(header, use_bin_type=True, default=_to_plain)
    except (TypeError, ValueError, OverflowError) as e:
        raise ProtocolError(f"header cannot be encoded: {e}") from None


def _check_header_value(v, depth: int, path: str):
    # Mirrors the C++ to_json(): nesting limit, string map keys, no ext types.
    if depth > MAX_DEPTH:
        raise ProtocolError("header nests too deeply")
    if v is None or isinstance(v, (bool, int, float, str, bytes)):
        return
    if isinstance(v, list):
        for i, x in enumerate(v):
            _check_header_value(x, depth + 1, f"{path}[{i}]")
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise ProtocolError("header map key is not a string" + (f" (in {path})" if path else ""))
            _check_header_value(x, depth + 1, f"{path}.{k}" if path else k)
        return
    raise ProtocolError(f"unsupported msgpack type in header ({type(v).__name__}"
                        + (f" at {path}" if path else "") + ")")


def decode_header(data) -> dict:
    """Unpacks a header frame; raises ProtocolError unless it is one msgpack map."""
    data = bytes(_as_buffer(data))
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError("header larger than 1 MiB")
    try:
        h = msgpack.unpackb(data, raw=False, strict_map_key=True, **_UNPACK_LIMITS)
    except msgpack.ExtraData:
        raise ProtocolError("header has trailing bytes after the msgpack map") from None
    except Exception as e:  # FormatError, StackError, ValueError (truncated/limits), Unicode…
        raise ProtocolError(f"malformed msgpack header: {type(e).__name__}: {e}") from None
    if not isinstance(h, dict):
        raise ProtocolError("header is not a msgpack map")
    _check_header_value(h, 0, "")
    return h


# ---------------------------------------------------------------------------------------
# Messages


def _as_buffer(frame) -> memoryview:
    """A byte view of a frame: bytes, bytearray, memoryview, zmq.Frame, numpy array."""
    buf = getattr(frame, "buffer", None)  # zmq.Frame (received with copy=False)
    mv = memoryview(buf if buf is not None else frame)
    if mv.ndim != 1 or mv.itemsize != 1 or not mv.c_contiguous:
        mv = mv.cast("B") if mv.c_contiguous else memoryview(mv.tobytes())
    return mv


def _descriptor_and_bytes(name: str, arr) -> tuple[dict, bytes]:
    if not isinstance(name, str) or not name:
        raise ProtocolError("array name must be a non-empty string")
    a = np.asarray(arr)
    dt = a.dtype
    dname = dt.name if dt.kind in "uif" else None
    if dname not in DTYPES or dt.itemsize != DTYPES[dname]:
        raise ProtocolError(f"array '{name}': dtype {dt} is not one of {' '.join(DTYPES)}")
    if dt.itemsize == 1:
        bo = "|"
    elif dt.byteorder in ("=", "|"):
        bo = _NATIVE
    else:
        bo = dt.byteorder
    desc = {"name": name, "dtype": dname, "shape": [int(n) for n in a.shape], "byteorder": bo}
    return desc, a.tobytes(order="C")


def encode(topic: str, header: dict, arrays: Sequence[tuple[str, np.ndarray]] = ()) -> list[bytes]:
    """Frames of one message: [topic, msgpack header, raw array bytes...].

    The header sent is a copy of `header` with `protocol` (= 1) and `arrays` (one descriptor
    per array: name, dtype, shape, byteorder) set, like the C++ encode(). Arrays keep their
    byte order ('>f4' is sent big-endian and described as '>'), in C order."""
    if not isinstance(header, dict):
        raise ProtocolError("header must be a dict")
    h = dict(header)
    descs, raws = [], []
    if isinstance(arrays, dict):
        arrays = list(arrays.items())
    for item in arrays:
        name, arr = item
        d, raw = _descriptor_and_bytes(name, arr)
        descs.append(d)
        raws.append(raw)
    h["protocol"] = PROTOCOL_VERSION
    h["arrays"] = descs
    t = topic.encode("utf-8") if isinstance(topic, str) else bytes(topic)
    return [t, encode_header(h)] + raws


def _require(d: dict, key: str):
    if not isinstance(d, dict) or key not in d:
        raise ProtocolError(f"missing key '{key}'")
    return d[key]


def _require_string(d: dict, key: str) -> str:
    v = _require(d, key)
    if isinstance(v, bytes):  # msgpack bin: the C++ side reads it as a string too
        v = v.decode("utf-8", errors="surrogateescape")
    if not isinstance(v, str):
        raise ProtocolError(f"key '{key}' must be a string")
    return v


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def decode(frames: Sequence) -> Message:
    """Parses the frames of one message (bytes, memoryviews or zmq.Frames).

    Checks, like the C++ decode(): at least topic and header; the header is a msgpack map;
    `protocol` == 1; `arrays` (optional, default empty) is a list with one descriptor per
    array frame; each descriptor has a string `name`, a known `dtype`, a `shape` of at most 8
    non-negative ints, an optional `byteorder` ('<' default, '>', '|', '='); each frame holds
    exactly prod(shape)*itemsize bytes. Raises ProtocolError naming the problem."""
    frames = list(frames)
    if len(frames) < 2:
        raise ProtocolError(f"message has {len(frames)} frame(s); need topic and header")
    topic = bytes(_as_buffer(frames[0])).decode("utf-8", errors="surrogateescape")
    header = decode_header(frames[1])
    version = _require(header, "protocol")
    if not _is_int(version) or version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {json.dumps(version, default=repr)} "
                            f"(this is version {PROTOCOL_VERSION})")
    descs = header.get("arrays", [])
    if not isinstance(descs, list):
        raise ProtocolError("'arrays' is not a list")
    if len(descs) != len(frames) - 2:
        raise ProtocolError(f"header describes {len(descs)} array(s) but "
                            f"{len(frames) - 2} array frame(s) follow")
    arrays: dict[str, np.ndarray] = {}
    for i, d in enumerate(descs):
        if not isinstance(d, dict):
            raise ProtocolError(f"array descriptor {i} is not a map")
        name = _require_string(d, "name")
        dname = _require_string(d, "dtype")
        if dname not in DTYPES:
            raise ProtocolError(f"unknown dtype '{dname}'")
        shape_j = _require(d, "shape")
        if not isinstance(shape_j, list) or len(shape_j) > MAX_SHAPE_RANK:
            raise ProtocolError(f"array '{name}': shape must be a list of at most 8 ints")
        for s in shape_j:
            if not _is_int(s):
                raise ProtocolError(f"array '{name}': shape entries must be ints")
        bo = _require_string(d, "byteorder") if "byteorder" in d else "<"
        if bo not in ("<", ">", "|", "="):
            raise ProtocolError(f"array '{name}': byteorder must be '<', '>' or '|'")
        if any(s < 0 for s in shape_j):
            raise ProtocolError(f"array '{name}': negative dimension")
        count = math.prod(shape_j)
        if count >= 1 << 64:
            raise ProtocolError(f"array '{name}': shape overflows")
        itemsize = DTYPES[dname]
        buf = _as_buffer(frames[i + 2])
        if buf.nbytes != count * itemsize:
            raise ProtocolError(f"array '{name}': frame has {buf.nbytes} bytes, descriptor "
                                f"{dname} shape needs {count * itemsize}")
        order = ">" if bo == ">" else (_NATIVE if bo == "=" else "<")
        dt = np.dtype(dname).newbyteorder(order) if itemsize > 1 else np.dtype(dname)
        if count == 0:
            a = np.empty(shape_j, dtype=dt)
        else:
            a = np.frombuffer(buf, dtype=dt, count=count).reshape(shape_j)
        arrays.setdefault(name, a)  # like C++ find()/take(): the first array of a name wins
    return Message(topic, header, arrays)


# ---------------------------------------------------------------------------------------
# Result products (PROTOCOL.md "Results"): the checks of the C++ parse_product
# (xanesd/protocol/products.hpp), so a subscriber can index a product's arrays without its own.

PRODUCT_TOPICS = ("status", "maps/fractions", "maps/thickness", "maps/residual", "maps/edge",
                  "maps/nenergies", "maps/segments", "references", "clusters", "energies", "errors")
_MAP_TOPIC_TYPE = {"maps/fractions": "map", "maps/thickness": "map", "maps/residual": "map",
                   "maps/edge": "map", "maps/nenergies": "map", "maps/segments": "map",
                   "clusters": "clusters", "references": "references"}


def _typed(h: dict, key: str, kind: str, lo=None):
    v = _require(h, key)
    ok = {"int": _is_int(v), "number": isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": isinstance(v, bool), "str": isinstance(v, str), "list": isinstance(v, list)}[kind]
    if not ok or (lo is not None and v < lo):
        raise ProtocolError(f"'{key}' must be {'a' if kind != 'int' else 'an'} {kind}"
                            + (f" >= {lo}" if lo is not None else "") + f", got {v!r:.64}")
    return v


def _product_array(msg: Message, name: str, dtype: str, shape) -> np.ndarray:
    if name not in msg.arrays:
        raise ProtocolError(f"{msg.topic}: no array '{name}'")
    a = msg.arrays[name]
    if a.dtype.name != dtype:
        raise ProtocolError(f"{msg.topic}: array '{name}' must be {dtype}, is {a.dtype.name}")
    if tuple(a.shape) != tuple(shape):
        raise ProtocolError(f"{msg.topic}: array '{name}' must have shape "
                            + "×".join(str(d) for d in shape))
    return a


def check_product(msg: Message) -> Message:
    """Checks a result publication against its contract: the header keys of its topic with
    their types, and each array's dtype and shape (K references × rows × cols …). Returns the
    message; raises ProtocolError naming what is wrong."""
    h, topic = msg.header, msg.topic
    if topic not in PRODUCT_TOPICS:
        raise ProtocolError(f"unknown result topic {topic!r:.64}")
    expected_type = _MAP_TOPIC_TYPE.get(topic) or {"errors": "error"}.get(topic, topic)
    if _require_string(h, "type") != expected_type:
        raise ProtocolError(f"{topic}: header type must be '{expected_type}'")
    _typed(h, "scan_id", "str")
    _typed(h, "time_unix", "number")
    _typed(h, "version", "int", 1 if topic == "errors" else 0)
    if topic in _MAP_TOPIC_TYPE:
        image = (_typed(h, "rows", "int", 1), _typed(h, "cols", "int", 1))
        _typed(h, "frames_applied", "int", 0)
        _typed(h, "last_seq", "int", -1)
        _typed(h, "energies_measured", "int", 0)
        _typed(h, "final", "bool")
    if topic == "maps/fractions":
        names = _typed(h, "reference_names", "list")
        if not names or not all(isinstance(n, str) for n in names):
            raise ProtocolError("maps/fractions: 'reference_names' must be a non-empty list of names")
        _typed(h, "fit_method", "str")
        _typed(h, "mask_thickness_threshold", "number")
        _typed(h, "mask_valid_pixels", "int", 0)
        for name in ("fractions", "fraction_sigma"):
            _product_array(msg, name, "float32", (len(names),) + image)
        _product_array(msg, "mask", "uint8", image)
        if _typed(h, "spatial", "bool") != ("spatial_neighbours" in msg.arrays):
            raise ProtocolError("maps/fractions: 'spatial' must say whether 'spatial_neighbours' is there")
        if h["spatial"]:
            _product_array(msg, "spatial_neighbours", "float32", image)
    elif topic in ("maps/thickness", "maps/residual", "maps/edge", "maps/nenergies"):
        names = {"maps/thickness": ("thickness",), "maps/residual": ("residual", "rfactor"),
                 "maps/edge": ("e0", "half_step", "white_line", "edge_step"),
                 "maps/nenergies": ("nenergies",)}[topic]
        for name in names:
            _product_array(msg, name, "uint16" if topic == "maps/nenergies" else "float32", image)
        if topic == "maps/edge":
            _typed(h, "e0_scan_eV", "number")
            _typed(h, "pixels_computed", "int", 0)
    elif topic == "maps/segments":
        if _typed(h, "waiting", "str"):
            if "segments" in msg.arrays:
                raise ProtocolError("maps/segments: a 'waiting' message carries no map")
        else:
            ids = _typed(h, "cluster_ids", "list")
            if not all(_is_int(i) and 1 <= i <= 254 for i in ids):
                raise ProtocolError("maps/segments: cluster ids are 1–254")
            _typed(h, "labelled_pixels", "int", 0)
            _typed(h, "silhouette", "number")
            _product_array(msg, "segments", "uint8", image)
    elif topic == "clusters":
        ids = _typed(h, "cluster_ids", "list")
        k, n_refs = len(ids), len(_typed(h, "reference_names", "list"))
        for key in ("pixels", "thickness", "residual", "noise", "fractions", "fraction_sigma"):
            if len(_typed(h, key, "list")) != k:
                raise ProtocolError(f"clusters: '{key}' must have one entry per cluster")
        for key in ("fractions", "fraction_sigma"):
            if any(len(row) not in (0, n_refs) for row in h[key]):
                raise ProtocolError(f"clusters: '{key}' lists must hold {n_refs} numbers or none")
        if not set(_typed(h, "unexplained", "list")) <= set(ids):
            raise ProtocolError("clusters: 'unexplained' names a cluster id not in 'cluster_ids'")
        if not isinstance(_require(h, "pca"), dict):
            raise ProtocolError("clusters: 'pca' must be a map")
        mean = msg.arrays.get("mean_spectra")
        if mean is None or mean.ndim != 2:
            raise ProtocolError("clusters: 'mean_spectra' must be k×E")
        for name in ("mean_spectra", "stderr_spectra"):
            _product_array(msg, name, "float64", (k, mean.shape[1]))
    elif topic == "references":
        _typed(h, "selected", "list")
        for r in _typed(h, "references", "list"):
            if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not isinstance(r.get("selected"), bool):
                raise ProtocolError("references: each of 'references' must be a map with 'name' and 'selected'")
    elif topic == "status":
        if _typed(h, "state", "str") not in ("idle", "running", "stopped", "aborted"):
            raise ProtocolError("status: 'state' must be idle, running, stopped or aborted")
        if not (h.get("scan") is None or isinstance(h["scan"], dict)) or "scan" not in h:
            raise ProtocolError("status: 'scan' must be a map or null")
        _typed(h, "references", "list")
    elif topic == "energies":
        e = msg.arrays.get("energies_eV")
        if e is None or e.dtype.name != "float64" or e.ndim != 1 or not 1 <= e.size <= 4096:
            raise ProtocolError("energies: 'energies_eV' must be a float64 list of 1 to 4096 energies")
        if np.any(np.diff(e) < 0):
            raise ProtocolError("energies: 'energies_eV' must be sorted")
    elif topic == "errors":
        if not _typed(h, "code", "str"):
            raise ProtocolError("errors: 'code' is empty")
        _typed(h, "message", "str")
        _typed(h, "count", "int", 1)
    return msg


def split_messages(frames: Sequence) -> list[list]:
    """Splits concatenated messages (topic, header, arrays...)* into per-message frame lists,
    using each header's `arrays` length (the layout of the `snapshot` reply)."""
    out, i, n = [], 0, len(frames)
    while i < n:
        if i + 1 >= n:
            raise ProtocolError(f"concatenated messages: frame {i} has no header frame after it")
        h = decode_header(frames[i + 1])
        descs = h.get("arrays", [])
        if not isinstance(descs, list):
            raise ProtocolError("'arrays' is not a list")
        end = i + 2 + len(descs)
        if end > n:
            raise ProtocolError(f"concatenated messages: message at frame {i} describes "
                                f"{len(descs)} array(s) but only {n - i - 2} frame(s) remain")
        out.append(list(frames[i:end]))
        i = end
    return out


# ---------------------------------------------------------------------------------------
# Ingest messages (field names as in PROTOCOL.md and protocol/src/messages.cpp)

MODES = ("fluorescence", "transmission")
ORDERS = ("energy-major", "pixel-major")
STOP_REASONS = ("completed", "aborted")


def start_message(scan_id: str, shape, energies_eV, mode: str, order: str = "energy-major",
                  xrf_channels: Iterable[str] = (), dark=None, flat=None,
                  references: str | Sequence[str] | None = None, metadata: dict | None = None) -> list[bytes]:
    """`start`: shape (rows, cols), planned energies (eV), mode 'fluorescence' or
    'transmission'; optional dark (rows×cols, every energy) and flat (rows×cols);
    optional references: the scan's references, a name or file path or a list of them
    (names of loaded or start-up library spectra, a references.libraries name, files the
    daemon can read); optional metadata: a JSON-able map of the run (`run_id` or `uid`
    identifies it), kept in the result file."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    rows, cols = (int(n) for n in shape)
    header = {
        "type": "start",
        "scan_id": str(scan_id),
        "shape": [rows, cols],
        "energies_eV": [float(e) for e in np.asarray(energies_eV, dtype=float).ravel()],
        "mode": mode,
        "order": order,
        "xrf_channels": [str(c) for c in xrf_channels],
    }
    if references is not None:
        refs = [references] if isinstance(references, str) else [str(r) for r in references]
        if not refs or any(not r for r in refs):
            raise ValueError("references must be a non-empty name or path, or a non-empty list of them")
        header["references"] = refs
    if metadata:
        if not isinstance(metadata, dict):
            raise ValueError("metadata must be a map")
        header["metadata"] = metadata
    arrays = []
    if dark is not None:
        arrays.append(("dark", dark))
    if flat is not None:
        arrays.append(("flat", flat))
    return encode("start", header, arrays)


def _is_scalar(x) -> bool:
    return isinstance(x, numbers.Real) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _pixel_indices(pixels) -> np.ndarray:
    """Flat pixel indices as sent: uint32 or int64 kept, other integer dtypes as int64."""
    pixels = np.asarray(pixels)
    if pixels.dtype.name not in ("uint32", "int64"):
        if pixels.dtype.kind not in "iu":
            raise ValueError("pixel indices must be integers")
        pixels = pixels.astype(np.int64)
    return pixels


def _encode_frame(header, counts, i0, dark, flat, pixels, xrf) -> list[bytes]:
    """A `frame` with its arrays in PROTOCOL.md's order (those given)."""
    arrays = [("counts", counts)]
    for name, a in (("i0", i0), ("dark", dark), ("flat", flat), ("pixels", pixels), ("xrf", xrf)):
        if a is not None:
            arrays.append((name, a))
    return encode("frame", header, arrays)


def frame_message(scan_id: str, seq: int, energy_index: int, energy_eV: float, counts,
                  region=None, i0=None, dark=None, flat=None, xrf=None) -> list[bytes]:
    """`frame`. region: None or 'full' (counts rows×cols), ('rows', row0) (counts
    nrows×cols, nrows taken from counts), ('pixels', pixel_indices) (counts N, flat pixel
    indices; sent as array `pixels`, uint32 or int64). i0: None (default 1), a scalar
    (header key `i0`) or an array of the region's shape (array `i0`). dark/flat: arrays of
    the region's shape overriding the start-level ones; xrf: channels × region."""
    counts = np.asarray(counts)
    pixels = None
    if region is None or region == "full" or region == ("full",):
        reg = {"kind": "full"}
    elif isinstance(region, dict):
        reg = dict(region)
    else:
        kind = region[0]
        if kind == "rows":
            if counts.ndim < 1:
                raise ValueError("region rows needs counts of shape nrows×cols")
            reg = {"kind": "rows", "row0": int(region[1]), "nrows": int(counts.shape[0])}
        elif kind == "pixels":
            reg = {"kind": "pixels"}
            pixels = _pixel_indices(region[1])
        else:
            raise ValueError(f"region must be None, 'full', ('rows', row0) or ('pixels', indices), got {region!r}")
    header = {
        "type": "frame",
        "scan_id": str(scan_id),
        "seq": int(seq),
        "energy_index": int(energy_index),
        "energy_eV": float(energy_eV),
        "region": reg,
    }
    i0_array = None
    if i0 is not None:
        if _is_scalar(i0):
            header["i0"] = float(i0)
        else:
            i0_array = np.asarray(i0)
    return _encode_frame(header, counts, i0_array, dark, flat, pixels, xrf)


def spectra_message(scan_id: str, seq: int, energy_indices, energies_eV, pixels, counts,
                    i0=None, dark=None, flat=None, xrf=None) -> list[bytes]:
    """A spectra batch: `frame` with several energies of the same pixels in one message, as a
    pixel-major scan measures them. counts: N pixels × E' energies (a spectrum per row); pixels:
    the N flat pixel indices; i0: None, one number per energy (header list) or an N × E' array;
    dark/flat: N × E' arrays; xrf: channels × N."""
    counts = np.asarray(counts)
    energy_indices = [int(e) for e in energy_indices]
    energies_eV = [float(e) for e in energies_eV]
    if counts.ndim != 2 or counts.shape[1] != len(energy_indices) or len(energies_eV) != len(energy_indices):
        raise ValueError("counts must be pixels × energies, one energy per entry of energy_indices and energies_eV")
    pixels = _pixel_indices(pixels)
    header = {"type": "frame", "scan_id": str(scan_id), "seq": int(seq), "energy_indices": energy_indices,
              "energies_eV": energies_eV, "region": {"kind": "pixels"}}
    i0_array = None
    if i0 is not None:
        if np.ndim(i0) == 1:
            header["i0"] = [float(v) for v in i0]
        else:
            i0_array = np.asarray(i0)
    return _encode_frame(header, counts, i0_array, dark, flat, pixels, xrf)


def stop_message(scan_id: str, reason: str = "completed", frames_sent: int | None = None) -> list[bytes]:
    """`stop`: reason 'completed' or 'aborted'; frames_sent lets xanesd report a mismatch."""
    if reason not in STOP_REASONS:
        raise ValueError(f"reason must be one of {STOP_REASONS}, got {reason!r}")
    header = {"type": "stop", "scan_id": str(scan_id), "reason": reason}
    if frames_sent is not None:
        header["frames_sent"] = int(frames_sent)
    return encode("stop", header, [])


# ---------------------------------------------------------------------------------------
# Control requests (PROTOCOL.md "Control"): the checks of the C++ ControlRequest::parse
# (xanesd/protocol/control.hpp), for a client that wants to refuse a request before sending it.

CONTROL_COMMANDS = ("status", "configure", "load_references", "snapshot", "select_energies",
                    "pixel", "save", "abort", "shutdown")


class RequestError(ProtocolError):
    """A control request that breaks the contract; `code` is the daemon's error code for it."""

    def __init__(self, code: str, why: str):
        super().__init__(why)
        self.code = code


def _refuse(why: str):
    raise RequestError("bad_control_request", why)


def _number_arg(req: dict, key: str, lo, hi, integer: bool):
    if key not in req:
        return
    v = req[key]
    ok = (_is_int(v) if integer else isinstance(v, (int, float)) and not isinstance(v, bool))
    if not ok or not lo <= v <= hi:
        _refuse(f"'{key}' must be {'an integer' if integer else 'a number'} in [{lo:g}, {hi:g}], got {v!r:.64}")


def _string_list_arg(req: dict, key: str, max_items: int):
    v = req[key]
    if not isinstance(v, list) or not 0 < len(v) <= max_items or \
            not all(isinstance(x, str) and 0 < len(x.encode()) <= 4096 for x in v):
        _refuse(f"'{key}' must be a non-empty list of at most {max_items} strings")


def _string_arg(req: dict, key: str, max_bytes: int, choices=None):
    if key not in req:
        return
    v = req[key]
    if not isinstance(v, str) or len(v.encode()) > max_bytes:
        _refuse(f"'{key}' must be a string of at most {max_bytes} bytes, got {v!r:.64}")
    if choices and v not in choices:
        _refuse(f"'{key}' must be " + ", ".join(f"'{c}'" for c in choices) + f", got {v!r:.64}")


def check_request(req) -> dict:
    """Checks a control request's command, request_id and arguments' types and ranges as the
    daemon does before anything runs; returns it, or raises RequestError with the daemon's code.
    What depends on the daemon's state (a pixel inside the image, a path inside
    output.directory, a config key) is left to the daemon."""
    if not isinstance(req, dict):
        _refuse("request is not a JSON object")
    cmd = req.get("cmd")
    if not isinstance(cmd, str):
        _refuse("request has no string 'cmd'")
    if cmd not in CONTROL_COMMANDS:
        _refuse(f"unknown command {cmd!r:.64} ({', '.join(CONTROL_COMMANDS)})")
    if "request_id" in req:
        rid = req["request_id"]
        if not (_is_int(rid) or (isinstance(rid, str) and 0 < len(rid.encode()) <= 128)):
            _refuse("'request_id' must be an integer or a string of 1–128 bytes")
    _number_arg(req, "timeout_ms", 100, 3.6e6, integer=True)
    if cmd == "configure":
        if "set" not in req:
            _refuse("configure needs 'set': {\"dotted.key\": value, …}")
        if not isinstance(req["set"], dict):
            _refuse("'set' must be a map of dotted config keys to values")
    elif cmd == "load_references":
        if "cluster" in req:
            if "files" in req:
                _refuse("give either 'cluster' or 'files', not both")
            _number_arg(req, "cluster", 1, 254, integer=True)
            _string_arg(req, "name", 128)
        elif "files" not in req:
            _refuse("load_references needs 'files' (paths) or 'cluster' (a cluster id)")
        else:
            _string_list_arg(req, "files", 256)
        if "names" in req:
            _string_list_arg(req, "names", 256)
        _string_arg(req, "normalize", 64)
        _string_arg(req, "energy_unit", 64)
    elif cmd == "select_energies":
        if isinstance(req.get("n"), str):
            if req["n"] != "auto":
                _refuse(f"'n' must be an integer in [1, 1000] or \"auto\", got {req['n']!r:.64}")
        else:
            _number_arg(req, "n", 1, 1000, integer=True)
        _number_arg(req, "n_tolerance", 0.001, 10, integer=False)
        _number_arg(req, "variance_floor", 1e-6, 10, integer=False)
        _number_arg(req, "normalization_points", 0, 100, integer=True)
        _number_arg(req, "noise", 0, 10, integer=False)
        _number_arg(req, "seed", 0, 9.2e18, integer=True)
        _string_arg(req, "objective", 64, ("equal_time", "equal_dwell"))
        _string_arg(req, "source", 64, ("references", "in_use", "clusters"))
        if "energies_eV" in req:
            e = req["energies_eV"]
            if not isinstance(e, list):
                _refuse("'energies_eV' must be a list of energies (eV)")
            for v in e:
                if not isinstance(v, (int, float)) or isinstance(v, bool):
                    _refuse(f"'energies_eV' must hold numbers, got {v!r:.64}")
    elif cmd == "pixel":
        for key in ("x", "y"):
            v = req.get(key)
            if not _is_int(v):
                raise RequestError("invalid_pixel", f"'{key}' must be an integer pixel index (x: column, y: row)")
            if v > 1 << 26:
                raise RequestError("invalid_pixel", f"'{key}' is outside any image (x: column, y: row)")
    elif cmd == "save":
        _string_arg(req, "path", 4096)
    return req


# ---------------------------------------------------------------------------------------
# Golden-message container (.frames): per frame, a little-endian uint32 length + the bytes.


def write_frames_file(path, frames: Sequence) -> None:
    with open(path, "wb") as f:
        for fr in frames:
            b = bytes(_as_buffer(fr))
            f.write(struct.pack("<I", len(b)))
            f.write(b)


def read_frames_file(path) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    frames, i = [], 0
    while i < len(data):
        if i + 4 > len(data):
            raise ProtocolError(f"{path}: truncated frame length at byte {i}")
        (n,) = struct.unpack_from("<I", data, i)
        i += 4
        if i + n > len(data):
            raise ProtocolError(f"{path}: frame of {n} bytes at byte {i} runs past the end")
        frames.append(data[i:i + n])
        i += n
    return frames


# ---------------------------------------------------------------------------------------
# Sockets (pyzmq imported on first use)


def _zmq():
    import zmq  # noqa: PLC0415 - optional dependency of the codec
    return zmq


def send(sock, frames: Sequence, flags: int = 0) -> None:
    """Sends the frames of one message (e.g. from frame_message) on a zmq socket."""
    sock.send_multipart(list(frames), flags=flags, copy=False)


def read_key_file(path: str) -> dict:
    """A CURVE key file written by `xanesd keygen --out NAME` (NAME.key: public and secret
    key; NAME.pub: public key), as {"public": bytes, "secret": bytes or None} in Z85."""
    keys = {"public": None, "secret": None}
    with open(path, "r", encoding="ascii") as f:
        for line in f.read(4096).splitlines():
            name, sep, value = line.partition("=")
            if line.startswith("#") or not sep:
                continue
            if name.strip() == "public-key":
                keys["public"] = value.strip().encode("ascii")
            elif name.strip() == "secret-key":
                keys["secret"] = value.strip().encode("ascii")
    if keys["public"] is None or len(keys["public"]) != 40:
        raise ValueError(f"key file '{path}' has no valid public-key (make one with `xanesd keygen --out NAME`)")
    return keys


def curve_client(sock, server_key: str | None, client_key: str | None) -> None:
    """Makes a socket a CURVE client (before connect) of a daemon with security.server_key:
    server_key its NAME.pub, client_key this client's NAME.key. No-op when both are None."""
    if not server_key and not client_key:
        return
    if not server_key or not client_key:
        raise ValueError("CURVE needs both the daemon's public key file and this client's key file")
    zmq = _zmq()
    server, client = read_key_file(server_key), read_key_file(client_key)
    if client["secret"] is None:
        raise ValueError(f"'{client_key}' has no secret-key (give the client's .key file, not its .pub)")
    sock.setsockopt(zmq.CURVE_SERVERKEY, server["public"])
    sock.setsockopt(zmq.CURVE_PUBLICKEY, client["public"])
    sock.setsockopt(zmq.CURVE_SECRETKEY, client["secret"])


class Client:
    """REQ client of the control socket: one JSON frame out, a JSON reply (plus, for
    `snapshot`, the cached publications) back. On timeout the socket is recreated (a REQ
    socket that missed its reply cannot send again) and TimeoutError is raised."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5557", timeout_ms: int = 30000, context=None,
                 server_key: str | None = None, client_key: str | None = None):
        zmq = _zmq()
        self.endpoint = endpoint
        self.server_key, self.client_key = server_key, client_key
        self.timeout_ms = timeout_ms
        self._ctx = context or zmq.Context.instance()
        self._sock = None
        self._connect()

    def _connect(self):
        zmq = _zmq()
        self._sock = self._ctx.socket(zmq.REQ)
        self._sock.setsockopt(zmq.LINGER, 0)
        if self.timeout_ms is not None and self.timeout_ms >= 0:
            # a REQ socket without a live peer pipe blocks in send: bound that too
            self._sock.setsockopt(zmq.SNDTIMEO, int(self.timeout_ms))
        curve_client(self._sock, self.server_key, self.client_key)
        self._sock.connect(self.endpoint)

    def close(self):
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request_frames(self, payload: dict) -> list:
        """Sends one request object; returns all reply frames (zmq.Frame objects). A pipeline
        command carries this client's timeout as its `timeout_ms` (unless it has its own): when
        the client gives up waiting, the daemon cancels the command if it has not started,
        instead of running it for nobody."""
        zmq = _zmq()
        if self._sock is None:
            self._connect()
        if (payload.get("cmd") not in ("status", "snapshot") and "timeout_ms" not in payload
                and self.timeout_ms is not None and 100 <= self.timeout_ms <= 3_600_000):
            payload = {**payload, "timeout_ms": int(self.timeout_ms)}
        try:
            self._sock.send(json.dumps(payload).encode("utf-8"))
            sent = True
        except zmq.Again:
            sent = False
        if self.timeout_ms is None or self.timeout_ms < 0:
            ready = sent
        else:
            ready = sent and self._sock.poll(self.timeout_ms, zmq.POLLIN)
        if not ready:
            self.close()
            self._connect()
            raise TimeoutError(f"no reply from {self.endpoint} to '{payload.get('cmd')}' "
                               f"within {self.timeout_ms} ms")
        return self._sock.recv_multipart(copy=False)

    def request(self, cmd: str, **args) -> dict:
        """Sends {"cmd": cmd, **args}; returns the JSON reply (frame 0) as a dict. The daemon's
        own timeout reply (code `command_timed_out`: the command's `timeout_ms`, this client's
        timeout, passed first there) raises TimeoutError, as the client's own timeout does."""
        frames = self.request_frames({"cmd": cmd, **args})
        reply = _parse_reply(frames[0])
        if reply.get("ok") is False and reply.get("code") == "command_timed_out":
            raise TimeoutError(reply.get("error", f"'{cmd}' timed out"))
        return reply

    def snapshot(self) -> tuple[dict, list[Message]]:
        """Late join: the reply dict and the cached publications, decoded."""
        frames = self.request_frames({"cmd": "snapshot"})
        reply = _parse_reply(frames[0])
        msgs = [decode(m) for m in split_messages(frames[1:])]
        expected = reply.get("publications")
        if isinstance(expected, int) and expected != len(msgs):
            raise ProtocolError(f"snapshot reply announces {expected} publication(s) but "
                                f"carries {len(msgs)}")
        return reply, msgs

    # Convenience wrappers for the commands of PROTOCOL.md.
    def status(self) -> dict:
        return self.request("status")

    def configure(self, settings: dict) -> dict:
        return self.request("configure", set=dict(settings))

    def load_references(self, files: Sequence[str], names: Sequence[str] | None = None,
                        normalize: str | None = None, energy_unit: str | None = None) -> dict:
        args = {"files": [str(f) for f in files]}
        if names:
            args["names"] = list(names)
        if normalize:
            args["normalize"] = normalize
        if energy_unit:
            args["energy_unit"] = energy_unit
        return self.request("load_references", **args)

    def select_energies(self, n: int | str | None = None, **args) -> dict:
        """`select_energies`: n an integer, "auto" (the smallest n within `n_tolerance` of the
        best predicted error at equal beam time) or None (the daemon's `select.n`); other
        arguments as PROTOCOL.md (objective, source, noise, ...). The reply's `dwell_weights`
        (mean 1) say how long to stay at each of its `energies_eV`."""
        if n is not None:
            args["n"] = n if isinstance(n, str) else int(n)
        return self.request("select_energies", **args)

    def pixel(self, x: int, y: int) -> dict:
        """`pixel`: one pixel of the current or last scan (x column, y row), checked and with its
        lists as numpy arrays (pixel_reply). Raises ProtocolError for a reply that is not ok."""
        reply = self.request("pixel", x=int(x), y=int(y))
        if not reply.get("ok", False):
            raise ProtocolError(f"pixel ({x}, {y}): {reply.get('code', '')}: {reply.get('error', 'failed')}")
        return pixel_reply(reply)

    def save(self, path: str | None = None) -> dict:
        return self.request("save", **({"path": path} if path else {}))

    def abort(self) -> dict:
        return self.request("abort")

    def shutdown(self) -> dict:
        return self.request("shutdown")


_PIXEL_POINTS = ("energies_eV", "spectrum", "sigma", "model", "background")


def pixel_reply(reply: dict) -> dict:
    """Checks an ok `pixel` reply (PROTOCOL.md) and returns a copy whose per-point lists
    (`energies_eV`, `spectrum`, `sigma`, `model`, `background`: one value per measured energy;
    `contributions`: K×n) and `fractions`, `fraction_sigma` are float64 numpy arrays."""
    for key in ("scan_id", "x", "y", "energies_eV", "spectrum", "segment"):
        _require(reply, key)
    out = dict(reply)
    n = len(reply["energies_eV"])
    for key in _PIXEL_POINTS:
        if key in reply:
            out[key] = np.asarray(reply[key], dtype=np.float64)
            if out[key].shape != (n,):
                raise ProtocolError(f"pixel reply: '{key}' has {out[key].size} values for {n} measured energies")
    names = reply.get("reference_names", [])
    for key in ("fractions", "fraction_sigma"):
        if key in reply:
            out[key] = np.asarray(reply[key], dtype=np.float64)
            if out[key].shape != (len(names),):
                raise ProtocolError(f"pixel reply: '{key}' has {out[key].size} values for {len(names)} references")
    if "contributions" in reply:
        c = np.asarray(reply["contributions"], dtype=np.float64).reshape(len(names), n)
        out["contributions"] = c
    return out


def _parse_reply(frame) -> dict:
    raw = bytes(_as_buffer(frame))
    try:
        reply = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"control reply is not JSON: {e}") from None
    if not isinstance(reply, dict):
        raise ProtocolError("control reply is not a JSON object")
    return reply


def subscribe(endpoint: str = "tcp://127.0.0.1:5556", topics: Iterable[str] = ("",), context=None,
              rcvhwm: int | None = None, server_key: str | None = None, client_key: str | None = None):
    """A SUB socket connected to the results endpoint, subscribed to topic prefixes."""
    zmq = _zmq()
    ctx = context or zmq.Context.instance()
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    if rcvhwm is not None:
        s.setsockopt(zmq.RCVHWM, int(rcvhwm))
    for t in topics:
        s.setsockopt(zmq.SUBSCRIBE, t.encode("utf-8") if isinstance(t, str) else bytes(t))
    curve_client(s, server_key, client_key)
    s.connect(endpoint)
    return s


def recv(sock, timeout_ms: int | None = None) -> Message | None:
    """Receives and decodes one message; None if nothing arrives within timeout_ms
    (None: wait forever). Raises ProtocolError for a malformed message."""
    zmq = _zmq()
    if timeout_ms is not None and not sock.poll(max(0, int(timeout_ms)), zmq.POLLIN):
        return None
    return decode(sock.recv_multipart(copy=False))

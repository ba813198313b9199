"""The openpi wire format: msgpack with numpy arrays encoded as tagged maps.

openpi-client does not use a msgpack extension type. An array travels as a plain msgpack map
with *bytes* keys::

    {b"__ndarray__": True, b"data": <C-order bytes>, b"dtype": "<f4", b"shape": [H, W]}

and a numpy scalar as ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": "<f4"}``.
Object, void and complex dtypes are refused on both sides. We speak exactly that so unchanged
openpi clients (and limb's OpenPIClient) talk to `recap serve`.

Decoding is strict and never unpickles: dtype strings are checked against an allow-list of
plain numeric kinds and the buffer length must match the shape, so garbage from the network
becomes a `ProtocolError` with a readable message instead of a crash or a huge allocation.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from recap_core.errors import RecapError

# numpy dtype kinds that are plain fixed-size numbers (bool, signed, unsigned, float).
# 'O' (object) could smuggle pickles, 'V'/'c' are refused by openpi too; strings/bytes
# travel as native msgpack str/bin, never as numpy arrays.
_ALLOWED_KINDS = frozenset("biuf")
_NDARRAY = b"__ndarray__"
_NPGENERIC = b"__npgeneric__"


class ProtocolError(RecapError):
    """A message on the wire is not valid openpi msgpack-numpy."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in _ALLOWED_KINDS:
        raise ProtocolError(
            f"cannot send a numpy value of dtype {obj.dtype}: the openpi wire format carries "
            "bool/int/uint/float arrays only",
            fix="convert strings to Python str and other arrays to a numeric dtype",
        )
    if isinstance(obj, np.ndarray):
        return {_NDARRAY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {_NPGENERIC: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialise {type(obj).__name__} for the openpi wire format")


def _checked_dtype(raw: Any) -> np.dtype:
    if not isinstance(raw, str | bytes):
        raise ProtocolError(f"array dtype must be a string like '<f4', got {type(raw).__name__}")
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise ProtocolError(f"unknown array dtype {text!r}") from exc
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"array dtype {text!r} is not allowed (only bool/int/uint/float)")
    return dtype


def _decode(obj: dict) -> Any:
    if _NDARRAY in obj:
        dtype = _checked_dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProtocolError(f"array shape must be a list of non-negative ints, got {shape!r}")
        if not isinstance(data, bytes):
            raise ProtocolError(f"array data must be bytes, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise ProtocolError(
                f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes, got {len(data)}"
            )
        # A read-only view on the message buffer, like openpi; consumers copy when they convert.
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if _NPGENERIC in obj:
        dtype = _checked_dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"bad numpy scalar of dtype {dtype.str}: {exc}") from exc
    return obj


def packb(obj: Any) -> bytes:
    """Encode a (nested) dict of numpy arrays, numbers and strings as openpi msgpack-numpy."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Decode one openpi msgpack-numpy message; anything malformed raises `ProtocolError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected a binary msgpack message, got {type(data).__name__}")
    try:
        # ext_hook left at its default: extension types stay opaque ExtType values, never code.
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as exc:
        raise ProtocolError(
            f"message is not valid msgpack ({type(exc).__name__}: {exc})",
            fix="send observations packed with openpi_client.msgpack_numpy (or recap_core.serve.protocol)",
        ) from exc

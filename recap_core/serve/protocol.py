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
The work per message is bounded too: maps, lists, the total item count and the nesting depth
are capped (a map announcing a million keys is refused at its header, before it is built), and
error texts quote at most a few short names (`clip`, `describe_names`), never a whole message.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgpack
import numpy as np

from recap_core.errors import RecapError

# numpy dtype kinds that are plain fixed-size numbers (bool, signed, unsigned, float).
# 'O' (object) could smuggle pickles, 'V'/'c' are refused by openpi too; strings/bytes
# travel as native msgpack str/bin, never as numpy arrays.
_ALLOWED_KINDS = frozenset("biuf")
_SIMPLE_DTYPE = re.compile(r"[<>|=]?[A-Za-z]+[0-9]*")
_NDARRAY = b"__ndarray__"
_NPGENERIC = b"__npgeneric__"
# Bounds on one decoded message. A real observation has a handful of keys a few levels deep
# (state, prompt, images -> cameras -> the array map), so these only stop hostile messages.
MAX_MAP_LEN = 1024  # keys in one map
MAX_ARRAY_LEN = 65536  # items in one list
MAX_ITEMS = 262144  # keys + items over the whole message
MAX_DEPTH = 32  # maps/lists nested in one another
MAX_NDIM = 32  # dimensions of one array


class ProtocolError(RecapError):
    """A message on the wire is not valid openpi msgpack-numpy."""


def clip(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters (with an ellipsis), for echoing client input in errors."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_names(names: Any, *, show: int = 5, width: int = 40) -> str:
    """At most `show` names of at most `width` characters each, then '... and N more'."""
    names = list(names)
    shown = ", ".join(repr(clip(str(name), width)) for name in names[:show])
    more = f", ... and {len(names) - show} more" if len(names) > show else ""
    return f"[{shown}{more}]"


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
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if len(text) > 16:  # '<f4', '|u1', 'float32': real dtype strings are short
        raise ProtocolError(f"unknown array dtype {clip(text, 20)!r}")
    # One simple type ('<f4', '|u1', 'float32'): numpy would parse anything else (',', '(2,)i4',
    # field lists) with its own mini-language, raising whatever that raises.
    if not _SIMPLE_DTYPE.fullmatch(text):
        raise ProtocolError(f"unknown array dtype {text!r}")
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError, SyntaxError) as exc:
        raise ProtocolError(f"unknown array dtype {text!r}") from exc
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"array dtype {text!r} is not allowed (only bool/int/uint/float)")
    return dtype


def _decode(obj: dict) -> Any:
    if _NDARRAY in obj:
        dtype = _checked_dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if (
            not isinstance(shape, list | tuple)
            or len(shape) > MAX_NDIM
            or not all(type(d) is int and 0 <= d < 2**63 for d in shape)
        ):
            raise ProtocolError(
                f"array shape must be a list of at most {MAX_NDIM} non-negative ints, got {clip(repr(shape))}"
            )
        if not isinstance(data, bytes):
            raise ProtocolError(f"array data must be bytes, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise ProtocolError(
                f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes, got {len(data)}"
            )
        # A read-only view on the message buffer, like openpi; consumers copy when they convert.
        try:
            return np.frombuffer(data, dtype=dtype).reshape(shape)
        except ValueError as exc:  # e.g. [0, 2**62]: no bytes, but more elements than numpy indexes
            raise ProtocolError(f"array shape {clip(repr(list(shape)))} is too large") from exc
    if _NPGENERIC in obj:
        dtype = _checked_dtype(obj.get(b"dtype"))
        try:
            return dtype.type(obj.get(b"data"))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"bad numpy scalar of dtype {dtype.str}: {clip(str(exc), 80)}") from exc
    return obj


def packb(obj: Any) -> bytes:
    """Encode a (nested) dict of numpy arrays, numbers and strings as openpi msgpack-numpy."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Decode one openpi msgpack-numpy message; anything malformed or too big raises `ProtocolError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected a binary msgpack message, got {type(data).__name__}")
    items = 0

    def count(obj: Any) -> Any:
        # Called as each map/list is completed, so a message of many small maps stops early too.
        nonlocal items
        items += len(obj)
        if items > MAX_ITEMS:
            raise ProtocolError(
                f"message has more than {MAX_ITEMS} map keys and list items",
                fix="send one observation: state, prompt and a few camera images",
            )
        return _decode(obj) if isinstance(obj, dict) else obj

    try:
        # ext_hook left at its default: extension types stay opaque ExtType values, never code.
        # max_map_len/max_array_len are checked at each header, before anything is allocated.
        obj = msgpack.unpackb(
            data, object_hook=count, list_hook=count, raw=False, strict_map_key=False,
            max_map_len=MAX_MAP_LEN, max_array_len=MAX_ARRAY_LEN,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException) as exc:
        if "exceeds max_" in str(exc):
            raise ProtocolError(
                f"message is too large: {clip(str(exc), 80)} (at most {MAX_MAP_LEN} keys per map "
                f"and {MAX_ARRAY_LEN} items per list)",
                fix="send one observation: state, prompt and a few camera images, as numpy arrays",
            ) from exc
        raise ProtocolError(
            f"message is not valid msgpack ({type(exc).__name__}: {clip(str(exc), 80)})",
            fix="send observations packed with openpi_client.msgpack_numpy (or recap_core.serve.protocol)",
        ) from exc
    _check_depth(obj)
    return obj


def decode_request(data: bytes | bytearray | memoryview) -> dict[Any, Any]:
    """Decode one request frame: a bounded openpi msgpack-numpy map, else `ProtocolError`."""
    obs = unpackb(data)
    if not isinstance(obs, dict):
        raise ProtocolError(
            f"a request must be a msgpack map (dict), got {type(obs).__name__}",
            fix="send the observation dict packed with openpi_client.msgpack_numpy.packb",
        )
    return obs


def _check_depth(obj: Any) -> None:
    # Iterative, so the check itself cannot overflow; the item cap bounds its work.
    stack = [(obj, 1)] if isinstance(obj, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ProtocolError(
                f"message nests maps/lists more than {MAX_DEPTH} levels deep",
                fix="send a flat observation: state, prompt and images -> camera -> array",
            )
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))

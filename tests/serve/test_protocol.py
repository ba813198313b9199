"""The wire format must match openpi-client's msgpack_numpy byte for byte and refuse garbage."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from openpi_client import msgpack_numpy as openpi_msgpack

from recap_core.serve import protocol

_dtypes = st.sampled_from([np.uint8, np.int32, np.int64, np.float32, np.float64, np.bool_, np.float16])
_arrays = _dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)))


@settings(max_examples=60, deadline=None)
@given(_arrays)
def test_arrays_encode_exactly_like_openpi_and_decode_both_ways(arr: np.ndarray) -> None:
    obs = {"state": arr, "prompt": "pick", "nested": {"a": [1, 2.5, "x"]}}
    ours = protocol.packb(obs)
    assert ours == openpi_msgpack.packb(obs)
    for decoded in (protocol.unpackb(ours), openpi_msgpack.unpackb(ours)):
        assert decoded["prompt"] == "pick"
        assert decoded["nested"] == {"a": [1, 2.5, "x"]}
        assert decoded["state"].dtype == arr.dtype and decoded["state"].shape == arr.shape
        np.testing.assert_array_equal(decoded["state"], arr)


def test_numpy_scalars_and_non_contiguous_arrays_round_trip() -> None:
    view = np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]
    msg = {"s": np.float32(1.5), "i": np.int64(-3), "v": view}
    data = protocol.packb(msg)
    assert data == openpi_msgpack.packb(msg)
    back = protocol.unpackb(data)
    assert back["s"] == np.float32(1.5) and back["s"].dtype == np.float32
    assert back["i"] == -3 and back["i"].dtype == np.int64
    np.testing.assert_array_equal(back["v"], view)


@pytest.mark.parametrize("arr", [np.array(["a"], dtype=object), np.zeros(2, np.complex64), np.zeros(2, "V4")])
def test_unsupported_dtypes_are_refused_when_sending(arr: np.ndarray) -> None:
    with pytest.raises(protocol.ProtocolError, match="dtype"):
        protocol.packb({"x": arr})


def _fake_array(**fields: object) -> bytes:
    body = {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<f4", b"shape": [2]}
    body.update({k.encode(): v for k, v in fields.items()})
    return msgpack.packb({"x": body}, use_bin_type=True)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (b"\xc1\xff\x00garbage", "not valid msgpack"),
        (b"", "not valid msgpack"),
        (msgpack.packb({"a": 1}) + b"\x01", "not valid msgpack"),
        (_fake_array(dtype="|O"), "not allowed"),
        (_fake_array(dtype="<c8"), "not allowed"),
        (_fake_array(dtype="no-such-dtype"), "unknown array dtype"),
        (_fake_array(dtype=5), "dtype must be a string"),
        (_fake_array(shape=[1000, 1000]), "needs 4000000 bytes, got 8"),
        (_fake_array(shape=[-2]), "non-negative"),
        (_fake_array(data="text"), "data must be bytes"),
    ],
)
def test_malformed_messages_raise_protocol_error(message: bytes, match: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=match):
        protocol.unpackb(message)


def test_extension_types_are_never_executed() -> None:
    # msgpack-numpy forks elsewhere use ext types for pickles; ours must leave them inert.
    data = msgpack.packb({"x": msgpack.ExtType(42, b"cos\nsystem\n(S'echo hi'\ntR.")}, use_bin_type=True)
    assert isinstance(protocol.unpackb(data)["x"], msgpack.ExtType)


def test_text_instead_of_bytes_is_refused() -> None:
    with pytest.raises(protocol.ProtocolError, match="binary"):
        protocol.unpackb("hello")  # type: ignore[arg-type]

"""Hostile and careless clients: the server answers with short errors, keeps serving, and never leaks.

Everything talks to 127.0.0.1 only, with bounded waits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

import recap_core
from recap_core.errors import ServeError
from recap_core.serve import protocol
from recap_core.serve.client import health_url
from recap_core.serve.observation import ObservationSpec, RequestError, prepare_observation
from recap_core.serve.server import PolicyServer, ServerConfig, ServerThread, bind_socket, client_text
from tests.conftest import panel_text, run_recap
from tests.serve.policies import STATE_DIM, echo_observation, expected_actions, state_echo_policy
from tests.serve.test_server import running

SERVER_ROOT = str(Path(recap_core.__file__).resolve().parent.parent)  # where the server's files live
ABSOLUTE_PATH = re.compile(r"(?<![\w:/])/[\w.-]+/")  # '/dir/...', not 'ws://host/' or 'a/b'


@pytest.fixture(scope="module")
def echo_server() -> Iterator[ServerThread]:
    # Default 64 MB frame limit, so the big hostile messages reach the decoder.
    with running(state_echo_policy()) as server:
        yield server


@contextlib.contextmanager
def session(url: str) -> Iterator[ClientConnection]:
    with connect(url, max_size=None, open_timeout=5, close_timeout=2) as ws:
        assert isinstance(ws.recv(timeout=5), bytes)  # metadata
        yield ws


def assert_no_leak(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text
    assert SERVER_ROOT not in text and not ABSOLUTE_PATH.search(text), text


def assert_good_request_works(ws: ClientConnection, value: float = 2.0) -> None:
    ws.send(protocol.packb(echo_observation(value)))
    reply = ws.recv(timeout=10)
    assert isinstance(reply, bytes), reply
    np.testing.assert_array_equal(protocol.unpackb(reply)["actions"], expected_actions(np.full(STATE_DIM, value)))


def _get_healthz(url: str, timeout_s: float) -> tuple[int, float]:
    start = time.perf_counter()
    with urllib.request.urlopen(health_url(url), timeout=timeout_s) as response:
        return response.status, time.perf_counter() - start


# ---- zero-size and odd images ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 0, 0), (3, 0, 8), (3, 8, 0), (0, 8, 3), (8, 0, 3)])
def test_zero_size_image_is_a_bad_request_and_the_connection_stays_open(
    echo_server: ServerThread, shape: tuple[int, ...]
) -> None:
    with session(echo_server.url) as ws:
        obs = echo_observation(1.0)
        obs["images"]["cam_high"] = np.zeros(shape, np.uint8)
        ws.send(protocol.packb(obs))
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str)
        assert reply.startswith("recap serve: bad request: images['cam_high'] has shape")
        assert "at least 1 pixel" in reply and "Fix:" in reply
        assert_no_leak(reply)
        assert_good_request_works(ws)


def test_images_without_three_channels_are_bad_requests(echo_server: ServerThread) -> None:
    with session(echo_server.url) as ws:
        for image in (np.zeros((4, 8, 8), np.uint8), np.zeros((8, 8), np.uint8), np.zeros((1, 3, 8, 8), np.uint8)):
            ws.send(protocol.packb(echo_observation(1.0, images={"cam_high": image})))
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and "expected a 3-channel image" in reply
            assert_no_leak(reply)
        assert_good_request_works(ws)


# ---- internal errors ------------------------------------------------------------------------


class _LeakyPolicy:
    """A policy whose bug message holds a server path, like a failed file read would."""

    def __init__(self) -> None:
        self.metadata = {"policy": "leaky"}

    def infer(self, obs):
        if obs.get("boom"):
            raise FileNotFoundError(f"[Errno 2] No such file: '{SERVER_ROOT}/secret/weights.npz'")
        return {"actions": np.ones((2, 2), np.float32)}


def test_policy_bug_reply_has_no_traceback_or_path_and_the_log_keeps_the_traceback(caplog) -> None:
    caplog.set_level(logging.INFO, logger="recap.serve")
    with running(_LeakyPolicy()) as server:
        with session(server.url) as ws:
            ws.send(protocol.packb({"boom": True}))
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str) and reply.startswith("recap serve: internal error in the policy")
            assert "FileNotFoundError" in reply and "<path>" in reply
            assert_no_leak(reply)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1011
            assert_no_leak(info.value.rcvd.reason)
        with session(server.url) as ws:  # other and later clients are unaffected
            ws.send(protocol.packb({}))
            assert isinstance(ws.recv(timeout=10), bytes)
    failures = [r for r in caplog.records if r.exc_info]
    assert failures and "secret/weights.npz" in str(failures[0].exc_info[1])


def test_client_text_hides_paths_but_keeps_urls_and_words() -> None:
    assert client_text("open '/srv/runs/a/ckpt.npz' failed") == "open '<path>' failed"
    assert client_text(r"no C:\Users\bob\ckpt here") == "no <path> here"
    assert client_text("see ws://127.0.0.1:8000/healthz for bool/int/uint/float") == (
        "see ws://127.0.0.1:8000/healthz for bool/int/uint/float"
    )
    assert len(client_text("x" * 10_000)) <= 1000


# ---- huge and deep messages -----------------------------------------------------------------


def _million_keys_flat() -> bytes:
    return msgpack.packb({f"key-{i:07d}": i for i in range(1_000_000)}, use_bin_type=True)


def _million_keys_in_small_maps() -> bytes:
    # Every map is under the per-map cap; the total item cap stops it.
    maps = {f"group-{g}": {f"key-{i:06d}": i for i in range(500)} for g in range(2000)}
    return msgpack.packb(maps, use_bin_type=True)


@pytest.mark.parametrize("make_message", [_million_keys_flat, _million_keys_in_small_maps])
def test_million_key_message_leaves_healthz_answering_and_gets_a_short_error(
    echo_server: ServerThread, make_message, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="recap.serve")
    message = make_message()
    assert len(message) > 10_000_000
    with session(echo_server.url) as ws:
        ws.send(message)
        status, elapsed = _get_healthz(echo_server.url, timeout_s=5)  # real HTTP GET while it is processed
        assert status == 200 and elapsed < 1.0
        reply = ws.recv(timeout=30)
        assert isinstance(reply, str) and reply.startswith("recap serve: bad request: message")
        assert len(reply.encode()) < 2048, reply[:300]
        assert "key-0" not in reply and "group-" not in reply
        assert_no_leak(reply)
        assert_good_request_works(ws)
    assert all(len(r.getMessage()) < 2048 for r in caplog.records)


def test_many_unknown_keys_are_named_briefly(echo_server: ServerThread) -> None:
    obs = echo_observation(1.0, **{f"unknown_{i:04d}_{'x' * 200}": i for i in range(600)})
    with session(echo_server.url) as ws:
        ws.send(protocol.packb(obs))
        reply = ws.recv(timeout=10)
        assert isinstance(reply, str) and "unexpected keys" in reply
        assert "... and 595 more" in reply and "x" * 41 not in reply
        assert len(reply.encode()) < 2048
        assert_good_request_works(ws)


def test_deep_nesting_and_long_lists_are_refused() -> None:
    deep = b"\x81\xa1k" * (protocol.MAX_DEPTH + 1) + b"\x01"  # {"k": {"k": ... 1}}
    with pytest.raises(protocol.ProtocolError, match="levels deep"):
        protocol.decode_request(deep)
    very_deep = b"\x91" * 5000 + b"\x90"  # past msgpack's own stack
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_request(very_deep)
    long_list = msgpack.packb({"state": list(range(protocol.MAX_ARRAY_LEN + 1))})
    with pytest.raises(protocol.ProtocolError, match="too large"):
        protocol.decode_request(long_list)
    huge_dtype = msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "f" * 100_000, b"shape": [0]}})
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.decode_request(huge_dtype)
    assert len(str(info.value)) < 300


# ---- property test of the wire decoder ------------------------------------------------------

_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
_keys = st.one_of(st.text(max_size=8), st.binary(max_size=8), st.integers(-5, 5))
_leaves = st.one_of(st.none(), st.booleans(), _ints, st.floats(), st.text(max_size=12), st.binary(max_size=12))
_dtype_text = st.one_of(
    st.sampled_from(["<f4", "|u1", "<i8", "|b1", "<f8", "float32", "|O", "<c8", "V4", "M8[s]", "<U3", "f4,f4"]),
    st.text(max_size=10),
)
_array_maps = st.fixed_dictionaries(
    {
        b"__ndarray__": st.just(True),
        b"data": st.binary(max_size=48),
        b"dtype": st.one_of(_dtype_text, _ints, st.none()),
        b"shape": st.one_of(
            st.lists(st.one_of(st.integers(-2, 6), st.integers(0, 2**64 - 1), st.booleans()), max_size=5),
            _leaves,
        ),
    }
)
_scalar_maps = st.fixed_dictionaries(
    {b"__npgeneric__": st.just(True), b"data": _leaves, b"dtype": st.one_of(_dtype_text, _ints)}
)
_values = st.recursive(
    st.one_of(_leaves, _array_maps, _scalar_maps),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)),
    max_leaves=20,
)
_sides = st.sampled_from([0, 1, 2, 5])
_image_shapes = st.one_of(
    st.tuples(st.just(3), _sides, _sides),  # CHW, zero sides included
    st.tuples(_sides, _sides, st.just(3)),  # HWC
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)
_images = st.one_of(
    hnp.arrays(st.sampled_from([np.uint8, np.float32, np.float64, np.int16, np.bool_]), _image_shapes),
    _values,
)
# Mostly nearly-valid observations, so the checks behind the first one get exercised too.
_observations = st.fixed_dictionaries(
    {
        "state": st.one_of(
            hnp.arrays(st.sampled_from([np.float32, np.float64]), (STATE_DIM,)),
            hnp.arrays(st.sampled_from([np.float32, np.int64, np.float16]), hnp.array_shapes(max_dims=2, max_side=6)),
            st.lists(st.one_of(st.floats(), _ints, st.lists(st.floats(), max_size=2)), max_size=6),
            _values,
        ),
        "images": st.one_of(
            st.dictionaries(st.sampled_from(["cam_high", "cam_low", "cam_left_wrist", "other"]), _images, max_size=3),
            _values,
        ),
    },
    optional={
        "prompt": st.one_of(st.text(max_size=10), _values),
        "adv_ind": st.one_of(st.sampled_from(["positive", "negative", "none", "maybe"]), _values),
    },
)
_SPEC = ObservationSpec(state_dim=STATE_DIM, cameras=("cam_high", "cam_left_wrist"), image_size=(4, 6))


def _decode_or_refuse(data: bytes) -> dict | None:
    """The decoder's contract: a dict, or a ProtocolError (never any other exception)."""
    try:
        obs = protocol.decode_request(data)
    except protocol.ProtocolError as exc:
        assert len(str(exc)) < 1000
        return None
    assert isinstance(obs, dict)
    return obs


def _check_observation(obs: dict) -> None:
    try:
        batch = prepare_observation(obs, _SPEC)
    except (RequestError, protocol.ProtocolError) as exc:
        assert len(str(exc)) < 1000
        return
    assert batch["state"].shape == (1, STATE_DIM) and batch["state"].dtype == np.float32
    for cam in _SPEC.cameras:
        assert batch["images"][cam].shape == (1, 4, 6, 3) and batch["images"][cam].dtype == np.uint8
        assert batch["image_masks"][cam].shape == (1,)
    assert batch["adv_ind"][0] in ("positive", "negative", "none")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_values, st.dictionaries(_keys, _values, max_size=6)))
def test_decoder_returns_a_dict_or_raises_protocol_error_for_any_msgpack(value) -> None:
    data = msgpack.packb(value, use_bin_type=True)
    obs = _decode_or_refuse(data)
    if obs is not None:
        _check_observation(obs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_observations)
def test_observation_like_messages_give_a_valid_batch_or_a_bad_request(obs: dict) -> None:
    try:
        data = protocol.packb(obs)
    except protocol.ProtocolError:
        return  # not sendable by our own client either (e.g. a complex array)
    decoded = _decode_or_refuse(data)
    if decoded is not None:
        _check_observation(decoded)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decoder_refuses_arbitrary_bytes_with_protocol_error_only(data: bytes) -> None:
    _decode_or_refuse(data)


# ---- binding the port -----------------------------------------------------------------------


def _busy_port() -> socket.socket:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    return busy


def test_bind_socket_reports_a_busy_port_with_a_fix() -> None:
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}") as info:
            bind_socket("127.0.0.1", port)
    assert info.value.fix == "choose another --port or stop the process using it"


def test_a_prebound_port_refuses_clients_until_the_server_is_ready() -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):  # bound while the model loads, but not listening yet
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    server = PolicyServer(state_echo_policy(), ServerConfig(port=port), sock=sock)
    ready = threading.Event()
    thread = threading.Thread(target=server.run, kwargs={"on_ready": lambda _: ready.set()}, daemon=True)
    thread.start()
    try:
        assert ready.wait(30) and server.port == port
        with session(server.url) as ws:
            assert_good_request_works(ws)
    finally:
        server.stop()
        thread.join(30)
    assert not thread.is_alive()


# ---- the CLI --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "1e9"])
def test_bad_max_message_mb_is_refused(value: str) -> None:
    result = run_recap("serve", "--policy", "zeros", "--action-shape", "1,1", "--port", "0",
                       "--max-message-mb", value, timeout=60)
    assert result.returncode == 2, result.stderr
    text = panel_text(result.stderr)
    assert "--max-message-mb must be a number from 0.001 to 4096 (MB)" in text
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_port_in_use_fails_at_once_before_the_model_loads(tmp_path: Path) -> None:
    # A run that would go through the doctor checks and then fail to load (kind 'pi99'):
    # the busy port must be reported first, without either.
    run = tmp_path / "run"
    (run / "checkpoints" / "10").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"preset": "pi06-tiny", "model": {"kind": "pi99"}}))
    with _busy_port() as busy:
        port = busy.getsockname()[1]
        start = time.monotonic()
        result = run_recap("serve", run, "--port", port, timeout=60)
        elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    text = panel_text(result.stderr)
    assert f"cannot listen on 127.0.0.1:{port}" in text
    assert "choose another --port or stop the process using it" in text
    assert "pi99" not in text and "Traceback" not in result.stderr
    assert elapsed < 10.0

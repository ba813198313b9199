"""The websocket server, in-process, driven by the real openpi client and by raw sockets."""

from __future__ import annotations

import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from recap_core.errors import ServeError
from recap_core.serve import protocol
from recap_core.serve.client import PolicyClient, PolicyServerError, check_health
from recap_core.serve.policy import ZerosPolicy
from recap_core.serve.server import PolicyServer, ServerConfig, ServerThread
from tests.serve.policies import (
    ACTION_DIM,
    HORIZON,
    BuggyPolicy,
    GatedPolicy,
    echo_observation,
    expected_actions,
    state_echo_policy,
)


@contextlib.contextmanager
def running(policy, **config) -> Iterator[ServerThread]:
    with ServerThread(policy, ServerConfig(port=0, **config)) as server:
        yield server


@pytest.fixture(scope="module")
def echo_server() -> Iterator[ServerThread]:
    with running(state_echo_policy(), max_message_bytes=64 * 1024) as server:
        yield server


def test_openpi_client_reads_metadata_and_gets_actions(echo_server: ServerThread) -> None:
    client = WebsocketClientPolicy(echo_server.url)
    meta = client.get_server_metadata()
    assert meta["adv_ind"]["default"] == "positive" and meta["action_horizon"] == HORIZON
    first = client.infer(echo_observation(2.0))
    assert first["actions"].shape == (HORIZON, ACTION_DIM) and first["actions"].dtype == np.float32
    np.testing.assert_array_equal(first["actions"], expected_actions(np.full(5, 2.0), "positive"))
    assert set(first["server_timing"]) == {"infer_ms", "queue_ms"}  # no previous request yet
    second = client.infer(echo_observation(1.0, adv_ind="negative"))
    np.testing.assert_array_equal(second["actions"], expected_actions(np.full(5, 1.0), "negative"))
    assert second["server_timing"]["prev_total_ms"] > 0
    assert second["policy_timing"]["infer_ms"] >= 0


def test_bad_requests_get_a_readable_error_and_the_connection_stays_usable(echo_server: ServerThread) -> None:
    client = WebsocketClientPolicy(echo_server.url)
    bad = [
        echo_observation(0.0, extra_key=1),
        {"images": {"cam_high": np.zeros((3, 8, 8), np.uint8)}},
        echo_observation(0.0, state=np.zeros(9, np.float32)),
    ]
    messages = ["unexpected keys ['extra_key']", "missing 'state'", "shape [9], expected [5]"]
    for obs, text in zip(bad, messages, strict=True):
        with pytest.raises(RuntimeError, match="Error in inference server") as info:
            client.infer(obs)
        assert text in str(info.value) and "Fix:" in str(info.value)
        # The same connection keeps working after the error.
        np.testing.assert_array_equal(client.infer(echo_observation(4.0))["actions"][0, 0], 1004.0)


def test_garbage_and_text_frames_are_refused_without_dropping_the_client(echo_server: ServerThread) -> None:
    with connect(echo_server.url) as ws:
        ws.recv()  # metadata
        ws.send(b"\xc1\x00\xff not msgpack")
        assert "not valid msgpack" in ws.recv()
        ws.send("a text frame")
        assert "text frame" in ws.recv()
        ws.send(protocol.packb([1, 2, 3]))
        assert "must be a msgpack map" in ws.recv()
        ws.send(protocol.packb(echo_observation(1.0)))
        assert isinstance(ws.recv(), bytes)


def test_oversized_message_closes_only_that_connection(echo_server: ServerThread) -> None:
    with connect(echo_server.url, max_size=None) as ws:
        ws.recv()
        ws.send(b"\0" * (65 * 1024))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009  # message too big
    assert PolicyClient(echo_server.url).infer(echo_observation(0.0))["actions"].shape == (HORIZON, ACTION_DIM)


def test_sixteen_concurrent_clients_get_their_own_answers(echo_server: ServerThread) -> None:
    def drive(client_id: int) -> int:
        with PolicyClient(echo_server.url, reply_timeout_s=30) as client:
            for step in range(5):
                value = client_id * 10.0 + step
                adv = ("positive", "negative", "none")[(client_id + step) % 3]
                out = client.infer(echo_observation(value, adv_ind=adv))
                np.testing.assert_array_equal(out["actions"], expected_actions(np.full(5, value), adv))
        return client_id

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert sorted(pool.map(drive, range(16), timeout=60)) == list(range(16))


def test_health_and_other_clients_answer_during_a_slow_inference() -> None:
    gated = GatedPolicy()
    with running(gated, workers=1) as server:
        slow = PolicyClient(server.url)
        # GatedPolicy has no example_observation, so the pre-listen warm-up does not touch the gate.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(slow.infer, {"x": np.float32(3.0)})
            assert gated.started.wait(5)
            t0 = time.perf_counter()
            assert check_health(server.url, timeout_s=2)
            assert time.perf_counter() - t0 < 1.0
            # A second client still connects and gets its metadata while the worker is busy.
            assert PolicyClient(server.url, connect_timeout_s=2).metadata == {"policy": "gated"}
            assert not pending.done()
            gated.gate.set()
            np.testing.assert_array_equal(pending.result(5)["actions"], np.full((2, 2), 3.0, np.float32))


def test_client_vanishing_mid_request_leaves_the_server_serving() -> None:
    gated = GatedPolicy()
    with running(gated) as server:
        ws = connect(server.url)
        ws.recv()
        ws.send(protocol.packb({"x": np.float32(1.0)}))
        assert gated.started.wait(5)
        ws.socket.close()  # vanish without a close handshake while the policy is working
        gated.gate.set()
        assert gated.finished.wait(5)
        assert check_health(server.url)
        out = PolicyClient(server.url).infer({"x": np.float32(2.0)})
        np.testing.assert_array_equal(out["actions"], np.full((2, 2), 2.0, np.float32))


def test_policy_bug_sends_traceback_closes_1011_and_others_keep_going() -> None:
    with running(BuggyPolicy()) as server:
        client = WebsocketClientPolicy(server.url)
        with pytest.raises(RuntimeError, match="ZeroDivisionError: policy bug"):
            client.infer({"boom": True})
        with pytest.raises(ConnectionClosed) as info:
            client.infer({})
        assert info.value.rcvd is not None and info.value.rcvd.code == 1011
        assert WebsocketClientPolicy(server.url).infer({})["actions"].shape == (2, 2)


def test_api_key_is_required_at_the_handshake() -> None:
    with running(ZerosPolicy(2, 2), api_key="s3cret") as server:
        with pytest.raises(InvalidStatus) as info:
            WebsocketClientPolicy(server.url)
        assert info.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            WebsocketClientPolicy(server.url, api_key="wrong")
        with pytest.raises(ServeError, match="API key"):
            PolicyClient(server.url, api_key="wrong", connect_timeout_s=2)
        assert WebsocketClientPolicy(server.url, api_key="s3cret").infer({})["actions"].shape == (2, 2)
        assert check_health(server.url)  # load balancers probe without the key


def test_full_queue_answers_busy_instead_of_piling_up() -> None:
    gated = GatedPolicy()
    with running(gated, max_queue=1) as server:
        first = PolicyClient(server.url)
        second = PolicyClient(server.url)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(first.infer, {"x": np.float32(1.0)})
            assert gated.started.wait(5)
            with pytest.raises(PolicyServerError, match="already waiting"):
                second.infer({"x": np.float32(2.0)})
            gated.gate.set()
            assert pending.result(5)["actions"][0, 0] == 1.0
        assert second.infer({"x": np.float32(2.0)})["actions"][0, 0] == 2.0


def test_stop_drains_in_flight_requests_then_closes() -> None:
    gated = GatedPolicy()
    server = ServerThread(gated, ServerConfig(port=0)).start()
    client = PolicyClient(server.url)
    idle = PolicyClient(server.url)
    late = PolicyClient(server.url)  # connected before the drain, asks during it
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.infer, {"x": np.float32(5.0)})
        assert gated.started.wait(5)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        time.sleep(0.2)
        assert not check_health(server.url)  # no longer listening, or 503 while draining
        with pytest.raises(PolicyServerError, match="shutting down"):
            late.infer({"x": np.float32(1.0)})
        gated.gate.set()
        np.testing.assert_array_equal(pending.result(5)["actions"], np.full((2, 2), 5.0, np.float32))
        stopper.join(10)
    assert not stopper.is_alive()
    with pytest.raises(ServeError, match="closed the connection"):
        idle.infer({"x": np.float32(1.0)})


def test_port_in_use_is_a_serve_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{port}"):
            ServerThread(ZerosPolicy(1, 1), ServerConfig(port=port)).start()


def test_warm_up_runs_before_the_port_opens() -> None:
    calls: list[float] = []

    class Counting(ZerosPolicy):
        def infer(self, obs):
            calls.append(time.perf_counter())
            return super().infer(obs)

    server = PolicyServer(Counting(1, 1), ServerConfig(port=0))
    seen_at_ready: list[int] = []
    thread = threading.Thread(target=server.run, kwargs={"on_ready": lambda s: (seen_at_ready.append(len(calls)), s.stop())})
    thread.start()
    thread.join(10)
    assert seen_at_ready == [1]


def test_server_config_rejects_bad_values() -> None:
    with pytest.raises(ServeError, match="--port"):
        ServerConfig(port=70000)
    with pytest.raises(ServeError, match="workers"):
        ServerConfig(workers=0)


def test_client_gives_up_on_a_silent_port_with_a_clear_error() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(ServeError, match=f"no policy server answered at ws://127.0.0.1:{port}") as info:
        PolicyClient(f"127.0.0.1:{port}", connect_timeout_s=0.5)
    assert "recap serve" in info.value.fix


def test_unsendable_metadata_is_refused_before_serving() -> None:
    policy = ZerosPolicy(1, 1)
    policy.metadata["path"] = object()
    with pytest.raises(ServeError, match="metadata cannot be sent"):
        PolicyServer(policy)

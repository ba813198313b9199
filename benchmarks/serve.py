"""Benchmark `recap serve`: latency p50/p99 and throughput for 1, 4 and 16 clients, plus the
protocol overhead against a bare websockets server answering the same frames. Prints JSON.

    .venv/bin/python benchmarks/serve.py                       # zeros policy, ALOHA-sized payload
    .venv/bin/python benchmarks/serve.py --policy runs/pi06-tiny --requests 20 --repeats 3

Each server runs in its own process (like a deployment); clients are threads here, each with its
own connection, sending one pre-packed ALOHA observation (3 cameras 224x224 uint8 CHW, state[14],
prompt, adv_ind) and waiting for the reply, as a robot's control loop does. A trained run is
served with its own request contract (state dim and cameras from the metadata it announces).
With `--repeats N` every figure is the median over N rounds (useful on a noisy shared machine). The bare server
replies to each request with a frame of the same size as the policy's reply, so the ratio is
what recap adds: decoding, validation, the worker hop, inference and encoding.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def aloha_observation(
    state_dim: int = 14, cameras: int = 3, size: int = 224, names: tuple[str, ...] | None = None
) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    names = names or ("cam_high", "cam_left_wrist", "cam_right_wrist")[:cameras]
    return {
        "state": rng.standard_normal(state_dim).astype(np.float32),
        "images": {name: rng.integers(0, 256, (3, size, size), dtype=np.uint8) for name in names},
        "prompt": "hand over the vial",
        "adv_ind": "positive",
    }


def observation_for(metadata: dict[str, Any], cameras: int) -> dict[str, Any]:
    """An ALOHA-style request that fits the served policy (zeros accepts anything)."""
    if "state_dim" not in metadata:
        return aloha_observation(cameras=cameras)
    names = tuple(metadata["cameras"])[:cameras]
    return aloha_observation(state_dim=int(metadata["state_dim"]), names=names)


def _run_policy_server(policy_arg: str, action_shape: str, options: dict[str, Any], ready: Any) -> None:
    from recap_core.serve.server import PolicyServer, ServerConfig

    if policy_arg == "zeros":
        from recap_core.serve.policy import ZerosPolicy

        horizon, dim = (int(x) for x in action_shape.split(","))
        policy = ZerosPolicy(horizon, dim)
    else:
        from recap_core.serve.loading import ServeOptions, load_policy

        policy = load_policy(Path(policy_arg), ServeOptions(**options))
    PolicyServer(policy, ServerConfig(port=0)).run(on_ready=lambda server: ready.put(server.url))


def _run_bare_server(reply: bytes, ready: Any) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        await ws.send(b"\x80")  # an empty msgpack map, like the metadata frame
        async for _ in ws:
            await ws.send(reply)

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
            ready.put(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}")
            await asyncio.Future()

    asyncio.run(main())


def _start(target: Any, *args: Any) -> tuple[mp.Process, str]:
    ctx = mp.get_context("spawn")
    ready = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    return proc, ready.get(timeout=600)


def _drive(url: str, payload: bytes, clients: int, requests: int, warmup: int) -> dict[str, float]:
    from websockets.sync.client import connect

    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with connect(url, compression=None, max_size=None) as ws:
                ws.recv()
                for _ in range(warmup):
                    ws.send(payload)
                    ws.recv()
                barrier.wait(timeout=120)
                for _ in range(requests):
                    t0 = time.perf_counter()
                    ws.send(payload)
                    reply = ws.recv()
                    latencies[i].append((time.perf_counter() - t0) * 1000.0)
                    if isinstance(reply, str):
                        raise RuntimeError(reply)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait(timeout=120)
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    flat = sorted(x for per_client in latencies for x in per_client)
    return {
        "p50_ms": round(float(np.percentile(flat, 50)), 3),
        "p99_ms": round(float(np.percentile(flat, 99)), 3),
        "mean_ms": round(statistics.fmean(flat), 3),
        "throughput_rps": round(len(flat) / wall, 1),
        "requests": len(flat),
    }


def _median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds; `requests` is the total."""
    out = {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0] if key != "requests"}
    out["requests"] = sum(r["requests"] for r in rounds)
    out["rounds"] = len(rounds)
    return out


def _median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the rounds; `requests` is the total."""
    out = {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0] if key != "requests"}
    out["requests"] = sum(r["requests"] for r in rounds)
    out["rounds"] = len(rounds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="zeros", help="'zeros' or a recap run directory / checkpoint")
    parser.add_argument("--action-shape", default="50,14", help="H,D for --policy zeros")
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=100, help="timed requests per client")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per client first")
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--num-steps", type=int, default=10, help="denoising steps (run policies)")
    parser.add_argument("--cfg-beta", type=float, default=1.0, help="guidance weight (run policies)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; figures are medians over them")
    args = parser.parse_args()

    from recap_core.serve import protocol
    from recap_core.serve.client import PolicyClient

    options = {"num_steps": args.num_steps, "cfg_beta": args.cfg_beta}
    policy_proc, policy_url = _start(_run_policy_server, args.policy, args.action_shape, options)
    try:
        with PolicyClient(policy_url) as probe:
            metadata = probe.metadata
        payload = protocol.packb(observation_for(metadata, args.cameras))
        # The bare server answers with a reply of exactly the policy's reply size.
        with PolicyClient(policy_url) as probe:
            reply = protocol.packb(probe.infer(protocol.unpackb(payload)))
        bare_proc, bare_url = _start(_run_bare_server, reply)
        counts = [int(c) for c in args.clients.split(",")]
        results: dict[str, dict[str, dict[str, float]]] = {"recap": {}, "bare_websockets": {}}
        for n in counts:
            rounds: dict[str, list[dict[str, float]]] = {"recap": [], "bare_websockets": []}
            for _ in range(max(1, args.repeats)):  # interleaved, so both see the same machine noise
                rounds["recap"].append(_drive(policy_url, payload, n, args.requests, args.warmup))
                rounds["bare_websockets"].append(_drive(bare_url, payload, n, args.requests, args.warmup))
            for name, per_round in rounds.items():
                results[name][str(n)] = _median_of(per_round)
        bare_proc.terminate()
    finally:
        policy_proc.terminate()
        policy_proc.join(30)
    overhead = {
        str(n): {
            "p50_ratio": round(results["recap"][str(n)]["p50_ms"] / results["bare_websockets"][str(n)]["p50_ms"], 2),
            "throughput_ratio": round(
                results["recap"][str(n)]["throughput_rps"] / results["bare_websockets"][str(n)]["throughput_rps"], 2
            ),
        }
        for n in counts
    }
    print(json.dumps({
        "benchmark": "serve",
        "policy": args.policy,
        "metadata": metadata,
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": mp.cpu_count(),
                 "python": platform.python_version()},
        "options": options if args.policy != "zeros" else None,
        "repeats": max(1, args.repeats),
        "request_bytes": len(payload),
        "reply_bytes": len(reply),
        "requests_per_client": args.requests,
        "results": results,
        "overhead_vs_bare": overhead,
    }, indent=2))


if __name__ == "__main__":
    main()

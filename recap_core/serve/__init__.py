"""openpi-compatible websocket policy serving.

- `protocol`: the openpi msgpack-numpy wire format (strict decoding, never unpickles).
- `observation`: request validation and mapping to the model batch (cameras, resize, adv_ind).
- `policy`: the `Policy` protocol, `ZerosPolicy` and the model-backed `ModelPolicy`.
- `loading`: run directory -> policy (`load_policy`, `register_policy_builder`).
- `server`: the asyncio websocket server (`PolicyServer`, `ServerThread`).
- `client`: a small synchronous client (`PolicyClient`, `check_health`).
"""

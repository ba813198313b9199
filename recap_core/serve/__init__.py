"""openpi-compatible websocket policy serving."""

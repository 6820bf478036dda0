"""Sharding: cut one model into stages that several nodes serve as a chain (`distinfer shard`).

`graph` (ops and cut points) · `onnx_graph` / `torch_graph` (readers) · `planner` (stages sized to
nodes) · `plan` (plan and pipeline description files) · `split` / `split_onnx` (stage folders) ·
`forward` (node-to-node hops) · `cli`. Importing this package imports nothing heavy: every node
loads it for the forwarding hook.
"""

__all__: list[str] = []

"""The distinfer node: an Open Inference Protocol (KServe v2) server over ONNX Runtime and PyTorch.

`worker` runs alone: it imports nothing from the other distinfer packages, while they all may use
its protocol codec, its client and its runtimes.
"""

__all__: list[str] = []

"""The device a run trains on, in the words its status event carries (the run page shows them)."""

import torch


def describe(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H200)``: the index is the worker's own (the server's slot picks the GPU)."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"

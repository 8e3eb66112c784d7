"""Every family test trains tiny models on a small shared CPU."""

import pytest
import torch


@pytest.fixture(autouse=True)
def small_cpu():
    """Tiny models on a small shared CPU: one thread (several spend most of a tiny op waiting on each other,
    10× slower here), and plain convolutions (oneDNN's take ~300× longer at these sizes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    finally:
        torch.set_num_threads(threads)

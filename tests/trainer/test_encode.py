"""The generic encoding helpers that every pipeline family shares."""

import torch

from trainer.encode import _decode_in_fp32


def test_validation_decodes_run_in_fp32_outside_the_runs_autocast():
    seen = {}

    def decode(latents, return_dict=True):
        seen.update(dtype=latents.dtype, autocast=torch.is_autocast_enabled("cpu"), return_dict=return_dict)
        return latents

    wrapped = _decode_in_fp32(decode)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        wrapped(torch.ones(1, 4, 2, 2, dtype=torch.bfloat16), return_dict=False)
        assert torch.is_autocast_enabled("cpu")  # the run's autocast is back after the decode
    assert seen == {"dtype": torch.float32, "autocast": False, "return_dict": False}
    wrapped(latents=torch.ones(1, 4, 2, 2, dtype=torch.float16))  # by keyword too
    assert seen["dtype"] == torch.float32

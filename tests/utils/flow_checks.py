"""What a family's own flow pipeline takes as the velocity, to hold ``predict`` against.

A flow pipeline run for one step from pure noise (sigma 1) to sigma 0 moves its latents by exactly
−velocity (one Euler step of FlowMatchEulerDiscreteScheduler), whatever its timestep scaling, sign
flips or time reversal inside. So a family's ``predict`` at sigma 1 must equal noise − that output.
"""

import torch


def one_step_from_noise(pipe, noise: torch.Tensor, **call_kwargs) -> torch.Tensor:
    """The pipeline's latents after one Euler step from ``noise`` (sigma 1) to sigma 0: noise − velocity,
    in the layout the pipeline returns with output_type="latent"."""
    with torch.no_grad():
        return pipe(latents=noise, num_inference_steps=1, output_type="latent", **call_kwargs).images

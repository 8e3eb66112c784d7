"""What the UNet families' tests (SDXL, Kolors) share: a tiny SDXL-style UNet."""

import torch

TEXT_DIM, POOLED = 64, 32  # the UNet's cross-attention width; the pooled text embedding's


def tiny_unet(**overrides):
    """Two levels (16 and 32 wide), 11 transformer blocks: down 0: 1 (level 0) · down 1: 1 layer × 2 (level 1)
    · mid: 2 (level 1) · up 0: 2 layers × 2 (level 1) · up 1: 2 layers × 1 (level 0)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**{
        "sample_size": 8, "in_channels": 4, "out_channels": 4, "block_out_channels": (16, 32), "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), "transformer_layers_per_block": (1, 2),
        "attention_head_dim": (2, 4), "norm_num_groups": 8, "cross_attention_dim": TEXT_DIM,
        "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + POOLED,  # six time ids of 8 each, then the pooled text
        **overrides,
    })

"""HunyuanVideo: a tiny transformer trained from an encoded dataset shaped as the pipeline encodes."""

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from trainer.families import FAMILIES, model_depth


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2, num_single_layers=2,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    )
    directory = tmp_path_factory.mktemp("hunyuan_video") / "transformer"
    model.save_pretrained(directory)
    return directory


def encoded(folder, n=4):
    """Latents (C, T', H', W') × scaling_factor; Llama embeddings with their mask (padded prompts); CLIP pooled.
    The empty prompt keeps the template's closing token, as the pipeline encodes it (an all-zero mask has no mean)."""
    torch.manual_seed(1)
    lengths = torch.tensor([3, 5, 7, 9, 11, 2][:n] + [1])
    cond = {"prompt_embeds": torch.randn(n + 1, 12, 16), "pooled_prompt_embeds": torch.randn(n + 1, 8),
            "prompt_attention_mask": (torch.arange(12) < lengths[:, None]).long()}
    return write_encoded_dataset(folder, torch.randn(n, 4, 2, 4, 4), {k: v[:n] for k, v in cond.items()},
                                 null_cond={k: v[n:] for k, v in cond.items()})


def test_depth_counts_double_then_single_blocks_and_not_the_refiner(model_dir):
    assert model_depth(FAMILIES["hunyuan_video"], str(model_dir)) == 4


def test_layersync_crosses_from_a_double_block_to_a_single_block(model_dir, tmp_path):
    data = encoded(tmp_path / "data")
    result = check_layersync_gradients("hunyuan_video", model_dir, data, tmp_path, student=1, teacher=4)
    # video tokens only, (B, T', P, D): 2 latent frames of 2×2 patches; the 12 text tokens are not in it
    assert result["student"] == result["teacher"] == (2, 2, 4, 20)


def test_training_with_gradient_checkpointing(model_dir, tmp_path):
    train_few_steps("hunyuan_video", model_dir, encoded(tmp_path / "data"), tmp_path / "run", 2, 3,
                    gradient_checkpointing=True)

import json

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from trainer.config import ConfigError, validate_config
from trainer.families import FAMILIES, model_depth
from trainer.models import implementation

JOINT, SINGLE, TEXT_TOKENS = 2, 3, 12


def make_model(directory, seed: int = 0):
    from diffusers import AuraFlowTransformer2DModel

    torch.manual_seed(seed)
    model = AuraFlowTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=JOINT, num_single_dit_layers=SINGLE,
        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
        out_channels=4, pos_embed_max_size=64,
    )
    model.save_pretrained(directory)
    return directory


@pytest.fixture
def model_dir(tmp_path):
    return make_model(tmp_path / "auraflow" / "transformer")


@pytest.fixture
def data_dir(tmp_path):
    """Latents as encode_media stores them (B, 4, H/8, W/8) and T5 embeddings as encode_prompts does."""
    torch.manual_seed(1)
    n = 6
    mask = torch.ones(n, TEXT_TOKENS, dtype=torch.long)
    mask[:, 7:] = 0
    cond = {"prompt_embeds": torch.randn(n, TEXT_TOKENS, 16) * mask[..., None], "prompt_attention_mask": mask}
    return write_encoded_dataset(tmp_path / "encoded", torch.randn(n, 4, 8, 8), cond, family="auraflow")


def test_depth_counts_joint_then_single_blocks_without_loading(model_dir):
    assert model_depth(FAMILIES["auraflow"], str(model_dir.parent)) == JOINT + SINGLE
    impl = implementation("auraflow")
    config = validate_config({"model_family": "auraflow", "pretrained_model_name_or_path": str(model_dir.parent),
                              "instance_data_dir": str(model_dir)})
    model = impl.load_model(config)
    blocks = impl.blocks(model)
    assert [b.module for b in blocks] == [*model.joint_transformer_blocks, *model.single_transformer_blocks]


def test_every_block_yields_the_image_tokens_and_single_blocks_drop_register_and_text(model_dir):
    impl = implementation("auraflow")
    config = validate_config({"model_family": "auraflow", "pretrained_model_name_or_path": str(model_dir),
                              "instance_data_dir": str(model_dir)})
    model = impl.load_model(config).eval()
    blocks = impl.blocks(model)
    states, seen = {}, {}
    for i, block in enumerate(blocks):
        block.module.register_forward_hook(lambda m, a, out, i=i, block=block: states.update({i: block.stream(out)}))
    # what the final norm receives is exactly the image part of the last single block's output
    model.norm_out.register_forward_pre_hook(lambda m, args: seen.update(image=args[0]))
    latents = torch.randn(2, 4, 8, 6)  # not square: 4 × 3 = 12 image tokens, as many as the text tokens
    with torch.no_grad():
        pred = impl.predict(model, latents, torch.tensor([0.3, 0.9]), {"prompt_embeds": torch.randn(2, TEXT_TOKENS, 16)})
    assert pred.shape == latents.shape
    assert {tuple(s.shape) for s in states.values()} == {(2, 12, 16)}
    torch.testing.assert_close(states[len(blocks) - 1], seen["image"])


def test_layersync_pair_from_a_joint_block_into_a_single_block_trains_the_student_only(model_dir, data_dir, tmp_path):
    result = check_layersync_gradients("auraflow", model_dir, data_dir, tmp_path, student=2, teacher=4)
    assert result["depth"] == JOINT + SINGLE
    assert result["student"] == result["teacher"] == (2, 16, 16)
    assert -1 <= result["similarity"] <= 1


def test_trains_full_with_gradient_checkpointing(model_dir, data_dir, tmp_path):
    events = train_few_steps("auraflow", model_dir, data_dir, tmp_path / "run", student=1, teacher=5,
                             gradient_checkpointing=True)
    assert any(e["event"] == "end" and e["status"] == "completed" for e in events)


def test_trains_a_lora_on_the_joint_and_single_attention(model_dir, data_dir, tmp_path):
    events = train_few_steps("auraflow", model_dir, data_dir, tmp_path / "run", student=1, teacher=4, model_type="lora",
                             lora_rank=4)
    logs = " ".join(e.get("message", "") for e in events if e["event"] == "log")
    assert "add_q_proj" in logs and "LoRA rank 4" in logs


def test_the_lora_targets_exist_in_both_kinds_of_block(model_dir):
    from diffusers import AuraFlowTransformer2DModel

    names = [name for name, _ in AuraFlowTransformer2DModel.from_pretrained(model_dir).named_modules()]
    for target in implementation("auraflow").lora_target_modules:
        assert any(n.endswith(f".{target}") for n in names), target
    assert any(n.startswith("single_transformer_blocks.") and n.endswith(".attn.to_q") for n in names)


def test_a_directory_of_another_model_is_refused_with_what_it_holds(model_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, _class_name="SD3Transformer2DModel")))
    impl = implementation("auraflow")
    config = validate_config({"model_family": "auraflow", "pretrained_model_name_or_path": str(other),
                              "instance_data_dir": str(other)})
    with pytest.raises(ValueError, match="holds a SD3Transformer2DModel, but this model family trains a AuraFlowTransformer2DModel"):
        impl.load_model(config)


def test_a_config_without_the_auraflow_depth_keys_is_refused_at_validation(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "FluxTransformer2DModel", "num_layers": 2}))
    with pytest.raises(ConfigError, match="no integer num_mmdit_layers, num_single_dit_layers"):
        validate_config({"model_family": "auraflow", "pretrained_model_name_or_path": str(tmp_path),
                         "instance_data_dir": str(tmp_path), "layersync_enabled": True, "layersync_student_block": 1})


# ---- the whole way: a tiny AuraFlow pipeline on disk, a folder of PNGs, encode, train, sample --------------------


def tiny_pipeline(directory):
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    words = ["▁a", "▁red", "▁blue", "▁square", "▁photo"]
    tokenizer = T5TokenizerFast(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0) for w in words])
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=8, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                               relative_attention_num_buckets=8))
    vae = AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    transformer = AuraFlowTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, out_channels=4, pos_embed_max_size=64,
    )
    pipe = AuraFlowPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                            scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.save_pretrained(directory)
    pipe = AuraFlowPipeline.from_pretrained(directory, local_files_only=True)  # as the trainer loads it: eval mode
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_encoded_prompts_and_the_sampler_reproduce_the_pipeline(tmp_path):
    from trainer.models.auraflow import encode_prompts, generate

    pipe = tiny_pipeline(tmp_path / "pipe")
    config = validate_config({"model_family": "auraflow", "pretrained_model_name_or_path": str(tmp_path / "pipe"),
                              "instance_data_dir": str(tmp_path), "validation_num_inference_steps": 2, "resolution": 16})
    with torch.no_grad():
        cond, null = encode_prompts(pipe, ["a red square"], config), encode_prompts(pipe, [""], config)
    assert cond["prompt_embeds"].shape == (1, 256, 16) and cond["prompt_attention_mask"].shape == (1, 256)
    ours = generate(pipe, cond, null, config, torch.Generator().manual_seed(0))
    theirs = pipe(prompt="a red square", negative_prompt="", height=16, width=16, num_inference_steps=2,
                  guidance_scale=config.validation_guidance, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images
    torch.testing.assert_close(ours, theirs * 2 - 1)


def test_the_whole_way_from_pngs_to_a_sample_and_a_reused_cache(tmp_path):
    from PIL import Image

    tiny_pipeline(tmp_path / "pipe")
    images = tmp_path / "images"
    images.mkdir()
    for i, (color, caption) in enumerate([((255, 0, 0), "a red square"), ((0, 0, 255), "a blue square")]):
        Image.new("RGB", (24, 24), color).save(images / f"{i}.png")
        (images / f"{i}.txt").write_text(caption)
    overrides = {"cache_dir": str(tmp_path / "cache"), "max_train_steps": 2, "validation_steps": 2,
                 "validation_num_inference_steps": 2}
    events = train_few_steps("auraflow", tmp_path / "pipe", images, tmp_path / "run", student=1, teacher=3, **overrides)
    assert any("encoding 2 image file(s)" in e.get("message", "") for e in events)
    assert list((tmp_path / "run" / "samples").glob("*.png")), "no validation sample was written"
    overrides.update(validation_steps=0)
    events = train_few_steps("auraflow", tmp_path / "pipe", images, tmp_path / "run2", student=1, teacher=3, **overrides)
    assert any("using the encoded dataset cached" in e.get("message", "") for e in events)

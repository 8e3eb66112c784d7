import json

import pytest
import torch

from tests.utils.families import check_layersync_gradients, train_few_steps, write_encoded_dataset
from trainer.config import ConfigError, validate_config
from trainer.families import FAMILIES, model_depth
from trainer.models import implementation

LAYERS, ACOUSTIC, COND_DIM = 4, 8, 16


def tiny_transformer(seed: int = 0):
    from diffusers import AceStepTransformer1DModel

    torch.manual_seed(seed)
    return AceStepTransformer1DModel(
        hidden_size=16, intermediate_size=32, num_hidden_layers=LAYERS, num_attention_heads=2, num_key_value_heads=1,
        head_dim=8, in_channels=3 * ACOUSTIC, audio_acoustic_hidden_dim=ACOUSTIC, patch_size=2, sliding_window=4,
        encoder_hidden_size=COND_DIM,
    )


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "ace" / "transformer"
    tiny_transformer().save_pretrained(directory)
    return directory


def encoded_cond(n: int, tokens: int = 20, frames: int = 12) -> dict:
    """As encode_prompts stores them: the packed condition padded to one length, its mask, the silence latents."""
    mask = torch.zeros(n, tokens, dtype=torch.long)
    for i in range(n):
        mask[i, : 6 + i] = 1
    return {
        "encoder_hidden_states": torch.randn(n, tokens, COND_DIM) * mask[..., None],
        "encoder_attention_mask": mask,
        "src_latents": torch.randn(1, frames, ACOUSTIC).expand(n, -1, -1).contiguous(),
    }


@pytest.fixture
def data_dir(tmp_path):
    torch.manual_seed(1)
    latents = torch.randn(6, ACOUSTIC, 11)  # the VAE's (B, C, T); an odd T exercises the model's patch padding
    return write_encoded_dataset(tmp_path / "encoded", latents, encoded_cond(6), family="ace_step")


def test_depth_is_num_hidden_layers_and_every_layer_is_a_block(model_dir):
    assert model_depth(FAMILIES["ace_step"], str(model_dir.parent)) == LAYERS
    impl = implementation("ace_step")
    config = validate_config({"model_family": "ace_step", "pretrained_model_name_or_path": str(model_dir.parent),
                              "instance_data_dir": str(model_dir)})
    model = impl.load_model(config)
    assert [b.module for b in impl.blocks(model)] == list(model.layers)


def test_predict_feeds_the_model_as_the_pipeline_does_and_every_block_is_audio_tokens(model_dir):
    impl = implementation("ace_step")
    model = tiny_transformer().eval()
    states = {}
    for i, block in enumerate(impl.blocks(model)):
        block.module.register_forward_hook(lambda m, a, out, i=i: states.update({i: out}))
    x, sigma, cond = torch.randn(2, ACOUSTIC, 11), torch.tensor([0.2, 0.7]), encoded_cond(2)
    with torch.no_grad():
        pred = impl.predict(model, x, sigma, cond)
        # the pipeline: (B, T, C) latents, t = r = sigma, context = [source latents, ones], the unpadded condition
        context = torch.cat([cond["src_latents"][:, :11], torch.ones(2, 11, ACOUSTIC)], dim=-1)
        expected = model(hidden_states=x.transpose(1, 2), timestep=sigma, timestep_r=sigma,
                         encoder_hidden_states=cond["encoder_hidden_states"][:, :7], context_latents=context,
                         return_dict=False)[0].transpose(1, 2)
    torch.testing.assert_close(pred, expected)
    assert {tuple(s.shape) for s in states.values()} == {(2, 6, 16)}  # 11 frames, patch 2 → 6 tokens


def test_layersync_gradient_reaches_the_student_layer_only(model_dir, data_dir, tmp_path):
    result = check_layersync_gradients("ace_step", model_dir, data_dir, tmp_path, student=1, teacher=3)
    assert result["depth"] == LAYERS and result["student"] == result["teacher"] == (2, 6, 16)


def test_trains_full_from_an_encoded_folder(model_dir, data_dir, tmp_path):
    events = train_few_steps("ace_step", model_dir, data_dir, tmp_path / "run", student=2, teacher=4)
    assert events[-1]["event"] == "end" and events[-1]["status"] == "completed"


def test_the_lora_targets_exist_in_self_and_cross_attention():
    names = [name for name, _ in tiny_transformer().named_modules()]
    for target in implementation("ace_step").lora_target_modules:
        assert any(n.endswith(f"self_attn.{target}") for n in names) and any(n.endswith(f"cross_attn.{target}") for n in names)


def test_a_directory_of_another_model_is_refused_with_what_it_holds(model_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(dict(config, _class_name="WanTransformer3DModel")))
    config = validate_config({"model_family": "ace_step", "pretrained_model_name_or_path": str(other),
                              "instance_data_dir": str(other)})
    with pytest.raises(ValueError, match="holds a WanTransformer3DModel, but this model family trains a AceStepTransformer1DModel"):
        implementation("ace_step").load_model(config)


def test_block_indices_are_checked_against_num_hidden_layers_at_submit_time(model_dir):
    base = {"model_family": "ace_step", "pretrained_model_name_or_path": str(model_dir),
            "instance_data_dir": str(model_dir), "layersync_enabled": True, "layersync_student_block": 2}
    with pytest.raises(ConfigError, match=f"teacher block 9 does not exist: this model has {LAYERS} blocks"):
        validate_config(dict(base, layersync_teacher_block=9))
    assert validate_config(dict(base, layersync_teacher_block=LAYERS)).layersync_teacher_block == LAYERS


# ---- the whole way: a tiny ACE-Step pipeline on disk, a folder of WAVs, encode, train, sample --------------------

DURATION = 0.5  # seconds: 24,000 samples → 11 latent frames with the tiny VAE's hop of 2,048


def tiny_pipeline(directory):
    from diffusers import AceStepConditionEncoder, AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    words = ["<unk>", "<pad>", "<|endoftext|>", "#", "Instruction", "Caption", "Metas", "Lyric", "Languages", "en",
             "drums", "piano", "loop", "-", "bpm:", "N/A"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<|endoftext|>")
    torch.manual_seed(0)
    text_encoder = Qwen3Model(Qwen3Config(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8,
    ))
    condition_encoder = AceStepConditionEncoder(
        hidden_size=COND_DIM, intermediate_size=32, text_hidden_dim=16, timbre_hidden_dim=ACOUSTIC,
        num_lyric_encoder_hidden_layers=1, num_timbre_encoder_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, sliding_window=4,
    )
    vae = AutoencoderOobleck(encoder_hidden_size=2 * ACOUSTIC, downsampling_ratios=[8, 16, 16],
                             channel_multiples=[1, 1, 1], decoder_channels=8, decoder_input_channels=ACOUSTIC,
                             sampling_rate=48000)
    pipe = AceStepPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=tiny_transformer(),
                           condition_encoder=condition_encoder,
                           scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0))
    pipe.save_pretrained(directory)
    pipe = AceStepPipeline.from_pretrained(directory, local_files_only=True)  # as the trainer loads it: eval mode
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_wavs(folder, captions: list[str]):
    import wave

    import numpy as np

    folder.mkdir()
    t = np.arange(int(DURATION * 48000)) / 48000
    for i, caption in enumerate(captions):
        tone = (0.3 * np.sin(2 * np.pi * 220 * (i + 1) * t) * 32767).astype("<i2")
        with wave.open(str(folder / f"clip{i}.wav"), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(48000)
            wav.writeframes(tone.tobytes())
        (folder / f"clip{i}.txt").write_text(caption)
    return folder


def test_encoded_prompts_and_the_sampler_reproduce_the_pipeline(tmp_path):
    from trainer.models.ace_step import encode_prompts, generate

    pipe = tiny_pipeline(tmp_path / "pipe")
    config = validate_config({"model_family": "ace_step", "pretrained_model_name_or_path": str(tmp_path / "pipe"),
                              "instance_data_dir": str(tmp_path), "audio_duration": DURATION,
                              "validation_num_inference_steps": 3, "validation_guidance": 3.0})
    with torch.no_grad():
        cond = encode_prompts(pipe, ["piano loop", "drums"], config)
        null = encode_prompts(pipe, [""], config)
    assert cond["encoder_hidden_states"].shape[1] == null["encoder_hidden_states"].shape[1]  # every row stacks
    torch.testing.assert_close(null["encoder_hidden_states"][0, 0], pipe.condition_encoder.null_condition_emb[0, 0])
    noise = torch.randn((1, ACOUSTIC, 12), generator=torch.Generator().manual_seed(0))
    ours = generate(pipe, {k: v[:1] for k, v in cond.items()}, null, config, torch.Generator().manual_seed(0))
    theirs = pipe(prompt="piano loop", audio_duration=DURATION, num_inference_steps=3, guidance_scale=3.0,
                  latents=noise.transpose(1, 2), output_type="pt").audios
    torch.testing.assert_close(ours, theirs)


def test_the_whole_way_from_wav_files_to_a_sample_and_a_reused_cache(tmp_path):
    tiny_pipeline(tmp_path / "pipe")
    data = write_wavs(tmp_path / "clips", ["piano loop", "drums loop", ""])
    overrides = {"audio_duration": DURATION, "cache_dir": str(tmp_path / "cache"), "max_train_steps": 2,
                 "validation_steps": 2, "validation_num_inference_steps": 2, "validation_prompt": "piano loop"}
    events = train_few_steps("ace_step", tmp_path / "pipe", data, tmp_path / "run", student=1, teacher=4, **overrides)
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert any("encoding 3 audio file(s)" in m for m in logs)
    assert list((tmp_path / "run" / "samples").glob("*.wav")), "no validation sample was written"
    overrides.update(validation_steps=0)
    events = train_few_steps("ace_step", tmp_path / "pipe", data, tmp_path / "run2", student=1, teacher=4, **overrides)
    assert any("using the encoded dataset cached" in e.get("message", "") for e in events)

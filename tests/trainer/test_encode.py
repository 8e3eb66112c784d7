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


def test_a_pipeline_sampler_builds_its_pipeline_once_per_run_and_model(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from trainer import encode
    from trainer.config import TrainConfig
    from trainer.sampling import Samplers

    (tmp_path / "model_index.json").write_text("{}")
    built = []

    class Pipe:
        vae = None

        def set_progress_bar_config(self, **kwargs):
            pass

    def load_pipeline(spec, config, device, dtype=None, **components):
        built.append(components["transformer"])
        return Pipe()

    monkeypatch.setattr(encode, "load_pipeline", load_pipeline)
    spec = encode.PipelineSpec("FakePipeline", encode_prompts=None, encode_media=None,
                               generate=lambda pipe, cond, null, config, generator: torch.zeros(1, 3, 4, 4))
    sample = encode.pipeline_sampler(spec)
    config = TrainConfig.model_construct(pretrained_model_name_or_path=str(tmp_path), seed=0)
    data = SimpleNamespace(prompt_cond={"prompt_embeds": torch.zeros(1, 2)}, null_cond={})
    model, other = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    run, next_run = Samplers(), Samplers()
    for step in range(3):
        assert sample(config, model, data, torch.device("cpu"), tmp_path / f"step_{step}", run).is_file()
    assert built == [model]  # kept by the run between samples
    sample(config, other, data, torch.device("cpu"), tmp_path / "other", run)
    sample(config, model, data, torch.device("cpu"), tmp_path / "next", next_run)
    assert built == [model, other, model]  # another model, or another run, gets its own pipeline

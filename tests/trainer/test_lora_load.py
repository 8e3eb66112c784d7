"""A LoRA trained here loads with diffusers' own ``pipe.load_lora_weights(checkpoint_folder)``, in a fresh
process that knows nothing of this trainer's files, and gives the training model's output; resume reads
the diffusers layout and the older ``lora/adapter_model.safetensors`` layout alike."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import trainer.train
from tests.trainer.families.test_sd3 import T5_DIM, sd3_pipeline
from tests.trainer.families.test_sdxl import sdxl_pipeline
from tests.trainer.families.tiny_unet import POOLED, TEXT_DIM
from tests.utils.families import train_few_steps, write_encoded_dataset
from tests.utils.tiny_pipelines import flux_pipeline
from trainer.events import read_events
from trainer.models import implementation
from trainer.outputs import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]


def _flux_cond(n):
    return {"prompt_embeds": torch.randn(n, 7, 32), "pooled_prompt_embeds": torch.randn(n, 32)}


def _sd3_cond(n):
    return {"prompt_embeds": torch.randn(n, 77 + 8, T5_DIM), "pooled_prompt_embeds": torch.randn(n, 64)}


def _sdxl_cond(n):
    return {"prompt_embeds": torch.randn(n, 77, TEXT_DIM), "pooled_prompt_embeds": torch.randn(n, POOLED),
            "add_time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]]).repeat(n, 1)}


# family → (tiny pipeline builder, conditioning maker, a timestep the family's predict takes, student, teacher)
FAMILIES = {
    "flux": (flux_pipeline, _flux_cond, torch.tensor([0.6, 0.3]), 2, 4),
    "sd3": (sd3_pipeline, _sd3_cond, torch.tensor([0.6, 0.3]), 2, 4),
    "sdxl": (sdxl_pipeline, _sdxl_cond, torch.tensor([600, 300]), 1, 10),
}

# the fresh process: diffusers alone loads the pipeline and the adapter; the family's predict only feeds
# the model the inputs the training process saved (the same call the trainer makes)
CHILD = """
import sys, torch
from diffusers import DiffusionPipeline
from trainer.models import implementation
pipe_dir, family, inputs_file, out_file, *folders = sys.argv[1:]
pipe = DiffusionPipeline.from_pretrained(pipe_dir, local_files_only=True)
model = pipe.unet if family == "sdxl" else pipe.transformer
x, t, cond = torch.load(inputs_file)
predict = implementation(family).predict
outputs = {}
with torch.no_grad():
    outputs["base"] = predict(model, x, t, cond)
    for i, folder in enumerate(folders):
        pipe.load_lora_weights(folder, adapter_name=f"run{i}")
        pipe.set_adapters([f"run{i}"])
        outputs[folder] = predict(model, x, t, cond)
torch.save(outputs, out_file)
"""


def _fresh_process_outputs(pipe_dir, family, inputs_file, out_file, folders) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", CHILD, str(pipe_dir), family, str(inputs_file), str(out_file), *map(str, folders)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # diffusers' own words when an adapter's keys miss the model (the bug this file guards against)
    trained_class = "UNet2DConditionModel" if family == "sdxl" else "Transformer"
    missed = [line for line in result.stderr.splitlines() if "No LoRA keys associated to" in line and trained_class in line]
    assert not missed, missed
    return torch.load(out_file)


@pytest.fixture(autouse=True)
def small_cpu():
    """One thread and plain convolutions: the tiny models train many times faster so (see families/conftest.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.backends.mkldnn.flags(enabled=False):
            yield
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_trained_lora_loads_with_diffusers_load_lora_weights_and_gives_the_training_models_output(family, tmp_path, monkeypatch):
    build, make_cond, t, student, teacher = FAMILIES[family]
    pipe_dir = build(tmp_path / "pipeline")
    torch.manual_seed(1)
    data = write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), make_cond(4), family=family)
    torch.manual_seed(2)
    inputs = (torch.randn(2, 4, 8, 8), t, make_cond(2))
    torch.save(inputs, tmp_path / "inputs.pt")
    trained = {}
    real_save_final = trainer.train.save_final

    def save_final_and_measure(output_dir, step, model, config, ema=None):
        # the training model itself, as training left it: its output is what the loaded adapter must give
        model.eval()
        with torch.no_grad():
            trained["output"] = implementation(family).predict(model, *inputs)
        return real_save_final(output_dir, step, model, config, ema)

    monkeypatch.setattr(trainer.train, "save_final", save_final_and_measure)
    # rank 4, alpha 8: the scale (alpha / rank) must travel with the file for the output to match
    run = tmp_path / "run"
    train_few_steps(family, pipe_dir, data, run, student, teacher, model_type="lora", lora_rank=4, lora_alpha=8,
                    learning_rate=1e-2, lr_scheduler="constant", checkpointing_steps=3, max_train_steps=3)
    listed = list_checkpoints(run)
    assert [(c["name"], c["step"], c["kind"]) for c in listed] == [("step_0000003", 3, "lora"), ("final", 3, "lora")]
    weights = load_file(run / "final" / "pytorch_lora_weights.safetensors")
    prefix = "unet." if family == "sdxl" else "transformer."
    assert weights and all(key.startswith(prefix) and ".lora_" in key for key in weights)

    outputs = _fresh_process_outputs(pipe_dir, family, tmp_path / "inputs.pt", tmp_path / "out.pt",
                                     [run / "checkpoints" / "step_0000003", run / "final"])
    base, expected = outputs["base"], trained["output"]
    change = (expected - base).abs().max().item()
    assert change > 1e-3, f"training moved the output by only {change}: the test cannot tell a loaded adapter from none"
    for folder in (run / "checkpoints" / "step_0000003", run / "final"):
        loaded = outputs[str(folder)]
        torch.testing.assert_close(loaded, expected, atol=change * 1e-3, rtol=1e-4)


def test_resume_reads_the_diffusers_layout_and_the_older_lora_folder_alike(tmp_path):
    pipe_dir = flux_pipeline(tmp_path / "pipeline")
    torch.manual_seed(1)
    data = write_encoded_dataset(tmp_path / "encoded", torch.randn(4, 4, 8, 8), _flux_cond(4), family="flux")
    common = dict(model_type="lora", lora_rank=4, learning_rate=1e-2, lr_scheduler="constant", checkpointing_steps=2)

    def losses(run):
        return [e["loss"] for e in read_events(run) if e["event"] == "metric" and "loss" in e]

    train_few_steps("flux", pipe_dir, data, tmp_path / "unbroken", 2, 4, max_train_steps=4, **common)
    for name in ("new", "old"):
        run = tmp_path / name
        train_few_steps("flux", pipe_dir, data, run, 2, 4, max_train_steps=2, **common)
        checkpoint = run / "checkpoints" / "step_0000002"
        if name == "old":  # as this trainer wrote adapters before: peft's bare keys in lora/adapter_model.safetensors
            weights = load_file(checkpoint / "pytorch_lora_weights.safetensors")
            (checkpoint / "lora").mkdir()
            save_file({k.removeprefix("transformer."): v for k, v in weights.items()}, checkpoint / "lora" / "adapter_model.safetensors")
            (checkpoint / "pytorch_lora_weights.safetensors").unlink()
            shutil.rmtree(run / "final")
        train_few_steps("flux", pipe_dir, data, run, 2, 4, max_train_steps=4, resume_from_checkpoint="latest", **common)
        assert any("resumed from" in e.get("message", "") for e in read_events(run))
        assert losses(run) == losses(tmp_path / "unbroken")
    assert json.loads((tmp_path / "old" / "final" / "state.json").read_text()) == {"step": 4, "kind": "lora"}


def test_a_family_without_a_diffusers_lora_loader_keeps_the_older_layout_and_resumes_from_it(tmp_path, tiny_model_dir):
    from tests.utils.factories import fast_config
    from trainer.config import validate_config
    from trainer.train import train

    def run(out, steps, **overrides):
        config = validate_config(fast_config(tiny_model_dir, out, model_type="lora", lora_rank=4, max_train_steps=steps,
                                             lr_scheduler="constant", checkpointing_steps=2, validation_steps=0,
                                             logging_steps=1, **overrides))
        assert train(config, out) == 0
        return [e["loss"] for e in read_events(out) if e["event"] == "metric" and "loss" in e]

    unbroken = run(tmp_path / "unbroken", 4)
    checkpoint = tmp_path / "unbroken" / "checkpoints" / "step_0000002"
    assert (checkpoint / "lora" / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "pytorch_lora_weights.safetensors").exists()
    assert (tmp_path / "unbroken" / "final" / "lora" / "adapter_model.safetensors").is_file()
    run(tmp_path / "resumed", 2)
    assert run(tmp_path / "resumed", 4, resume_from_checkpoint="latest") == unbroken

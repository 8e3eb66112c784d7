"""A run's weights used elsewhere: a full fine-tune's final/ loads with from_pretrained, ``layersync export
--pipeline`` writes a pipeline DiffusionPipeline loads (trained transformer or fused LoRA), ``--kohya`` a
LoRA in the kohya layout that diffusers reads back to the same model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import trainer.export
from tests.trainer.test_lora_load import FAMILIES, small_cpu  # noqa: F401 (an autouse fixture)
from tests.utils.families import train_few_steps, write_encoded_dataset
from trainer.export import ExportError, export_kohya, export_pipeline
from trainer.models import implementation

ROOT = Path(__file__).resolve().parents[2]


def layersync(*args) -> subprocess.CompletedProcess:
    """The console script's entry point in a fresh process."""
    code = "import sys; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)


def _train(family, tmp_path, name, **overrides) -> tuple[Path, Path, tuple]:
    build, make_cond, t, student, teacher = FAMILIES[family]
    pipe_dir = tmp_path / f"{family}-pipeline"
    if not pipe_dir.exists():
        build(pipe_dir)
    torch.manual_seed(1)
    data = write_encoded_dataset(tmp_path / f"{family}-encoded", torch.randn(4, 4, 8, 8), make_cond(4), family=family)
    run = tmp_path / name
    train_few_steps(family, pipe_dir, data, run, student, teacher, max_train_steps=2, checkpointing_steps=2,
                    learning_rate=1e-2, lr_scheduler="constant", **overrides)
    torch.manual_seed(2)
    return pipe_dir, run, (torch.randn(2, 4, 8, 8), t, make_cond(2))


def _output(family, model, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return implementation(family).predict(model, *inputs)


@pytest.fixture(scope="module")
def flux_full(tmp_path_factory):
    return _train("flux", tmp_path_factory.mktemp("full"), "run", use_ema=True)


def test_a_full_fine_tunes_final_weights_load_with_from_pretrained(flux_full):
    from diffusers import FluxTransformer2DModel

    pipe_dir, run, _ = flux_full
    assert json.loads((run / "final" / "state.json").read_text()) == {"step": 2, "kind": "full"}
    final = FluxTransformer2DModel.from_pretrained(run / "final", local_files_only=True)
    checkpoint = FluxTransformer2DModel.from_pretrained(run / "checkpoints" / "step_0000002" / "transformer")
    base = FluxTransformer2DModel.from_pretrained(pipe_dir / "transformer")
    trained, saved, original = final.state_dict(), checkpoint.state_dict(), base.state_dict()
    assert all(torch.equal(trained[k], saved[k]) for k in saved)
    assert any(not torch.equal(trained[k], original[k]) for k in original)  # training moved the weights
    ema = FluxTransformer2DModel.from_pretrained(run / "final" / "ema", local_files_only=True).state_dict()
    assert any(not torch.equal(ema[k], trained[k]) for k in trained)  # the averaged weights are their own


def test_export_pipeline_writes_a_pipeline_with_the_trained_transformer(flux_full, tmp_path):
    from diffusers import DiffusionPipeline, FluxTransformer2DModel

    pipe_dir, run, inputs = flux_full
    result = layersync("export", run, "--pipeline", tmp_path / "exported")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LoRA fused" not in result.stdout and "to " in result.stdout
    exported = DiffusionPipeline.from_pretrained(tmp_path / "exported", local_files_only=True)
    base = DiffusionPipeline.from_pretrained(pipe_dir, local_files_only=True)
    trained = FluxTransformer2DModel.from_pretrained(run / "final")
    assert type(exported).__name__ == "FluxPipeline"
    torch.testing.assert_close(_output("flux", exported.transformer, inputs), _output("flux", trained, inputs), atol=0, rtol=0)
    assert not torch.equal(_output("flux", exported.transformer, inputs), _output("flux", base.transformer, inputs))
    for name, p in base.vae.state_dict().items():  # the rest is the base pipeline's
        assert torch.equal(exported.vae.state_dict()[name], p)
    # a checkpoint's transformer/ folder exports the same (here the same step as final/)
    export_pipeline(run, tmp_path / "from_step", checkpoint="step_0000002", log=lambda *a: None)
    from_step = FluxTransformer2DModel.from_pretrained(tmp_path / "from_step" / "transformer")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in from_step.state_dict().items())
    # an exported folder is never written over
    again = layersync("export", run, "--pipeline", tmp_path / "exported")
    assert again.returncode == 1 and "exists and is not empty" in again.stderr


def test_export_lists_the_runs_weights_and_refuses_what_it_cannot_do(flux_full, tmp_path, capsys):
    from app.cli import main  # in this process: the same entry point as the console script, without its start-up

    _, run, _ = flux_full
    assert main(["export", str(run)]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["step_0000002", "final"]
    assert main(["export", str(run), "--kohya", str(tmp_path / "x.safetensors")]) == 1
    assert "holds full weights, not a LoRA" in capsys.readouterr().err
    assert main(["export", str(run), "--checkpoint", "step_9", "--pipeline", str(tmp_path / "p")]) == 1
    assert "choose one of step_0000002, final" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["export", str(run), "--fuse-lora"])
    assert exited.value.code == 2 and "--fuse-lora goes with --pipeline OUT" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not (tmp_path / "x.safetensors").exists()


def test_export_pipeline_fuses_a_lora_into_the_transformer(tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline

    pipe_dir, run, inputs = _train("flux", tmp_path, "lora", model_type="lora", lora_rank=4, lora_alpha=8)
    with pytest.raises(ExportError, match="is a LoRA: pass --fuse-lora"):
        export_pipeline(run, tmp_path / "unfused")
    export_pipeline(run, tmp_path / "fused", fuse_lora=True, log=lambda *a: None)
    fused = DiffusionPipeline.from_pretrained(tmp_path / "fused", local_files_only=True)
    assert not any("lora" in name for name, _ in fused.transformer.named_parameters())  # plain weights, nothing to load
    applied = DiffusionPipeline.from_pretrained(pipe_dir, local_files_only=True)
    base = _output("flux", applied.transformer, inputs)
    applied.load_lora_weights(run / "final")
    expected = _output("flux", applied.transformer, inputs)
    got = _output("flux", fused.transformer, inputs)
    change = (expected - base).abs().max().item()
    assert change > 1e-3
    torch.testing.assert_close(got, expected, atol=change * 1e-3, rtol=1e-4)
    # the families without a diffusers LoRA loader fuse with peft's merge instead: the same weights
    monkeypatch.setattr(trainer.export, "lora_loader", lambda config: None)
    export_pipeline(run, tmp_path / "fused_by_peft", fuse_lora=True, log=lambda *a: None)
    by_peft = DiffusionPipeline.from_pretrained(tmp_path / "fused_by_peft", local_files_only=True)
    assert not any("lora" in name for name, _ in by_peft.transformer.named_parameters())
    torch.testing.assert_close(_output("flux", by_peft.transformer, inputs), expected, atol=change * 1e-3, rtol=1e-4)
    monkeypatch.undo()
    with pytest.raises(ExportError, match="only for the UNet families"):
        export_kohya(run, tmp_path / "flux_kohya.safetensors")


def test_a_sdxl_lora_exports_to_the_kohya_layout_that_diffusers_reads_back_the_same(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    pipe_dir, run, inputs = _train("sdxl", tmp_path, "lora", model_type="lora", lora_rank=4, lora_alpha=2)
    out = tmp_path / "sdxl_kohya.safetensors"
    result = layersync("export", run, "--kohya", out)
    assert result.returncode == 0, result.stderr[-3000:]
    kohya = load_file(out)
    downs = [k for k in kohya if k.endswith(".lora_down.weight")]
    assert downs and all(k.startswith("lora_unet_") for k in kohya)
    assert all(kohya[k.replace(".lora_down.weight", ".alpha")].item() == 2.0 for k in downs)
    pipe = StableDiffusionXLPipeline.from_pretrained(pipe_dir, local_files_only=True)
    base = _output("sdxl", pipe.unet, inputs)
    pipe.load_lora_weights(run / "final", adapter_name="diffusers_layout")
    expected = _output("sdxl", pipe.unet, inputs)
    pipe.load_lora_weights(str(out), adapter_name="kohya_layout")  # diffusers' own kohya → diffusers converter
    pipe.set_adapters(["kohya_layout"])
    got = _output("sdxl", pipe.unet, inputs)
    change = (expected - base).abs().max().item()
    assert change > 1e-4
    torch.testing.assert_close(got, expected, atol=change * 1e-3, rtol=1e-4)


def test_a_unet_familys_full_fine_tune_exports_with_the_trained_unet(tmp_path):
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    pipe_dir, run, inputs = _train("sdxl", tmp_path, "full")
    trained = UNet2DConditionModel.from_pretrained(run / "final", local_files_only=True)
    base = UNet2DConditionModel.from_pretrained(pipe_dir / "unet", local_files_only=True)
    assert not torch.equal(_output("sdxl", base, inputs), _output("sdxl", trained, inputs))
    export_pipeline(run, tmp_path / "exported", log=lambda *a: None)
    exported = DiffusionPipeline.from_pretrained(tmp_path / "exported", local_files_only=True)
    assert type(exported).__name__ == "StableDiffusionXLPipeline"
    torch.testing.assert_close(_output("sdxl", exported.unet, inputs), _output("sdxl", trained, inputs), atol=0, rtol=0)

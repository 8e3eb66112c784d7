"""base_model_precision: the frozen base's linear layers quantized (torchao weight-only), the LoRA adapter in fp32
and trainable; it trains on this CPU and resumes exactly; refused for a full fine-tune and on a device without a path."""

import pytest
import torch
from torch import nn

from tests.utils.factories import fast_config
from trainer.config import ConfigError, validate_config
from trainer.events import read_events
from trainer.train import train

pytest.importorskip("torchao", reason="torchao is not installed (pip install 'layersync-studio[memory]')")

from trainer.quantize import device_problem, frozen_linears, quantize_base  # noqa: E402


class Tiny(nn.Module):
    _keep_in_fp32_modules = ["time_embed"]

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(64, 64)
        self.mlp = nn.Linear(64, 64)
        self.time_embed = nn.Linear(64, 64)
        self.out = nn.Linear(64, 64)
        with torch.no_grad():
            self.out.weight[3].zero_()  # a zero-initialised row, as adaLN-Zero and output layers start

    def forward(self, x):
        return self.out(self.mlp(self.qkv(x)) + self.time_embed(x))


def with_lora():
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = Tiny()
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["qkv"], init_lora_weights=False), model)
    return model


@pytest.mark.parametrize("precision, tolerance", [("int8", 0.02), ("fp8", 0.1)])
def test_the_frozen_linears_shrink_and_the_adapter_stays_fp32_and_trainable(precision, tolerance):
    model = with_lora()
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    before = model(x)
    assert sorted(frozen_linears(model)) == ["mlp", "out", "qkv.base_layer"]
    message = quantize_base(model, precision, torch.device("cpu"))
    assert message.startswith(f"base quantized to {precision} (torchao weight-only)")
    quantized = {name for name, p in model.named_parameters() if type(p).__name__ not in ("Parameter", "Tensor")}
    if precision == "int8":
        assert quantized == {"qkv.base_layer.weight", "mlp.weight", "out.weight"} and "0.1 MiB" in message
    else:  # torchao would turn out's zero row into NaN: that layer is kept, and the log says so
        assert quantized == {"qkv.base_layer.weight", "mlp.weight"} and "1 with an all-zero row kept" in message
    assert type(model.time_embed.weight).__name__ == "Parameter"  # a module the model keeps in fp32
    lora = [p for p in model.parameters() if p.requires_grad]
    assert len(lora) == 2 and all(p.dtype == torch.float32 and type(p).__name__ == "Parameter" for p in lora)
    after = model(x)
    assert torch.isfinite(after).all()
    assert (after - before).abs().max() < tolerance * before.abs().max()
    after.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)


def test_a_device_without_a_torchao_path_is_refused_before_anything_moves():
    assert device_problem("int8", torch.device("cpu")) is None and device_problem("fp8", torch.device("cuda")) is None
    model = with_lora()
    with pytest.raises(ConfigError) as caught:
        quantize_base(model, "fp8", torch.device("mps"))
    assert caught.value.errors == [("base_model_precision", (
        "base_model_precision fp8: torchao's weight-only quantization runs on CPUs and CUDA GPUs, not on mps devices; "
        "set base_model_precision to no_change"))]
    assert all(type(p).__name__ == "Parameter" for p in model.parameters())


def test_a_full_fine_tune_cannot_quantize_its_base():
    with pytest.raises(ConfigError) as caught:
        validate_config({"base_model_precision": "int8-torchao"})  # SimpleTuner's name for it
    assert caught.value.errors == [("base_model_precision", (
        "base_model_precision int8 quantizes the frozen base of a LoRA run, but model_type is full (every weight "
        "trains, none is frozen): set model_type to lora, or base_model_precision to no_change"))]
    assert validate_config({"base_model_precision": "fp8-quanto", "model_type": "lora"}).base_model_precision == "fp8"


def losses(events):
    return {e["step"]: e["loss"] for e in events if e["event"] == "metric" and "loss" in e}


def lora_config(model_dir, out, **overrides):
    settings = dict(model_type="lora", lora_rank=4, max_train_steps=6, logging_steps=1, validation_steps=0, checkpointing_steps=3)
    return validate_config(fast_config(model_dir, out, **{**settings, **overrides}))


def test_an_int8_base_lora_trains_on_this_cpu_and_resumes_exactly(tmp_path, tiny_model_dir):
    whole = tmp_path / "whole"
    assert train(lora_config(tiny_model_dir, whole, base_model_precision="int8"), whole) == 0
    events = read_events(whole)
    assert any(e.get("message", "").startswith("base quantized to int8") for e in events)
    unbroken = losses(events)
    assert len(unbroken) == 6 and all(torch.isfinite(torch.tensor(list(unbroken.values()))))
    assert (whole / "checkpoints" / "step_0000006" / "lora").is_dir()  # the adapter alone, as with no_change
    parts = tmp_path / "parts"
    assert train(lora_config(tiny_model_dir, parts, base_model_precision="int8", max_train_steps=3), parts) == 0
    assert train(lora_config(tiny_model_dir, parts, base_model_precision="int8", resume_from_checkpoint="latest"), parts) == 0
    assert losses(read_events(parts)) == pytest.approx(unbroken, rel=1e-5)


def test_an_fp8_base_lora_trains_on_this_cpu(tmp_path, tiny_model_dir):
    out = tmp_path / "fp8"
    assert train(lora_config(tiny_model_dir, out, base_model_precision="fp8", max_train_steps=3), out) == 0
    values = list(losses(read_events(out)).values())
    assert len(values) == 3 and all(torch.isfinite(torch.tensor(values)))


def test_backward_keeps_the_quantized_weights_not_a_full_precision_copy_and_gets_the_same_gradients():
    """Plain autograd through a torchao weight saves its dequantized fp32 copy per layer until backward."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    def run(ours: bool):
        model = with_lora()
        if ours:
            quantize_base(model, "int8", torch.device("cpu"))
        else:
            quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, fqn: fqn in frozen_linears(model))
        saved = []
        pack = lambda t: saved.append(0 if hasattr(t, "__tensor_flatten__") else t.numel()) or t  # noqa: E731
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(torch.randn(4, 64, generator=torch.Generator().manual_seed(1)))
        out.square().mean().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        return max(saved), grads

    (largest, grads), (plain_largest, plain_grads) = run(True), run(False)
    assert plain_largest == 64 * 64 and largest < 64 * 64  # a whole 64×64 weight, or only activations (4×64)
    assert torch.allclose(grads, plain_grads, atol=1e-6)

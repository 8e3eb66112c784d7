"""A LoRA run's frozen base in fewer bytes: weight-only quantization of its linear layers with torchao.

``int8``: each weight row in int8 with one scale (torchao's Int8WeightOnlyConfig); ``fp8``: float8 e4m3
with a scale per row (Float8WeightOnlyConfig). Activations, the LoRA adapter (fp32, trainable) and the
layers a model keeps in fp32 (``_keep_in_fp32_modules``) are left as they are; convolutions too; for fp8
also a layer with an all-zero row (a zero-initialised output layer), which torchao would turn into NaN. The
adapter learns against the quantized base (as in SimpleTuner's and ai-toolkit's quantized LoRA training).

Where each runs: both are weight-only, so the matmul runs in the activations' precision on the dequantized
(int8: scaled) weight and needs no fp8 or int8 matmul unit (torchao's note on Float8WeightOnlyConfig; its
compute-capability 8.9 gate is for fp8 activations, not asked here). Measured on this CPU (torch 2.13,
torchao 0.18): both train. CUDA takes both (not measured here: no GPU); any other device is refused before
any step, with its name.

The table and the checks at the top are torch-free (the config checks read them); ``quantize_base`` imports
torch and torchao when called.
"""

import importlib.util
import logging

PRECISIONS = ("no_change", "int8", "fp8")
EXTRA = "quantize"
# SimpleTuner's names: the precision is what matters; the library is ours (torchao)
ALIASES = {"int8-torchao": "int8", "int8-quanto": "int8", "fp8-torchao": "fp8", "fp8-quanto": "fp8", "none": "no_change"}


def canonical(value):
    """A base_model_precision as a config may give it (ours or SimpleTuner's) → ours; anything else unchanged."""
    if isinstance(value, str) and value.strip().lower() in ALIASES:
        return ALIASES[value.strip().lower()]
    return value


def precision_problem(precision: str) -> str | None:
    """Why this environment cannot quantize (torchao missing), or None. Torch-free."""
    if precision == "no_change" or importlib.util.find_spec("torchao") is not None:
        return None
    return (f"base_model_precision {precision} needs the torchao package, which is not installed: "
            f"pip install 'layersync-studio[{EXTRA}]' (or pip install torchao), or set base_model_precision to no_change")


def device_problem(precision: str, device) -> str | None:
    """Why ``device`` has no torchao weight-only path for this precision, or None."""
    if precision == "no_change" or device.type in ("cpu", "cuda"):
        return None
    return (f"base_model_precision {precision}: torchao's weight-only quantization runs on CPUs and CUDA GPUs, "
            f"not on {device.type} devices; set base_model_precision to no_change")


def _nbytes(tensor) -> int:
    """Bytes a tensor holds; a torchao tensor subclass counts its inner tensors (the int8 data and its scales)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = flatten()
        return sum(_nbytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def frozen_linears(model) -> list[str]:
    """Names of the linear layers quantization may touch: frozen, not the adapter's, not kept in fp32."""
    from torch import nn

    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    return [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and "lora_" not in name and not module.weight.requires_grad
        and not any(part in keep for part in name.split("."))
    ]


def _dequantizing_linear():
    import torch

    class DequantizingLinear(torch.autograd.Function):
        """``x Wᵀ + b`` with a frozen quantized ``W``. Autograd would save the dequantized full-precision copy of
        every layer's W for the backward pass (the input's gradient needs it), so a step would hold the base in
        full precision again on top of its int8/fp8 copy; this keeps W as it is and dequantizes it again there."""

        @staticmethod
        def forward(ctx, x, weight, bias):
            ctx.weight = weight  # the quantized parameter itself, by reference: nothing copied
            return torch.nn.functional.linear(x, weight.dequantize().to(x.dtype), bias)

        @staticmethod
        def backward(ctx, grad):
            return grad @ ctx.weight.dequantize().to(grad.dtype), None, None  # the base and its bias are frozen

    return DequantizingLinear


def _forward_dequantizing(module, function):
    def forward(x):
        return function.apply(x, module.weight, module.bias)

    module.forward = forward


def quantize_base(model, precision: str, device) -> str:
    """Quantize the frozen linear layers of ``model`` in place (each moved to ``device`` first, so the whole
    model never sits there in full precision); returns what was done, in words, for the run's log."""
    import torch

    from trainer.problems import ConfigError

    problem = precision_problem(precision) or device_problem(precision, device)
    if problem:
        raise ConfigError([("base_model_precision", problem)])
    if device.type == "cpu":  # torchao announces each CUDA kernel library it cannot load: none is used on the CPU
        logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    targets = set(frozen_linears(model))
    kept = set()
    if precision == "fp8":  # torchao 0.18 scales each row by its max: an all-zero row becomes 0/0, NaN
        modules = dict(model.named_modules())
        kept = {name for name in targets if (modules[name].weight.abs().amax(dim=1) == 0).any()}
        targets -= kept
    if not targets:
        raise ConfigError([("base_model_precision", (
            f"{type(model).__name__} has no frozen linear layers to quantize; set base_model_precision to no_change"))])
    before = sum(_nbytes(p) for p in model.parameters())
    config = Int8WeightOnlyConfig() if precision == "int8" else Float8WeightOnlyConfig()
    with torch.no_grad():
        quantize_(model, config, filter_fn=lambda module, fqn: fqn in targets, device=device)
    function = _dequantizing_linear()
    for name, module in model.named_modules():
        if name in targets:
            _forward_dequantizing(module, function)
    after = sum(_nbytes(p) for p in model.parameters())
    why_kept = f" ({len(kept)} with an all-zero row kept as they were: fp8 cannot scale a zero row)" if kept else ""
    return (f"base quantized to {precision} (torchao weight-only): {len(targets)} linear layers{why_kept}; "
            f"weights {before / 2**20:.1f} MiB → {after / 2**20:.1f} MiB, the LoRA adapter in fp32")

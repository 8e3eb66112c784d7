"""Family overhead benchmark (not a test): LayerSync on/off step time and peak memory on a small
Flux and a small Wan, each with and without gradient checkpointing, through the real training loop.

Each model is built from config and saved as a local directory; the data is an encoded dataset of
random latents and text embeddings shaped as the family's encoders write them (the encoders are not
what is measured). Ways alternate within each round so drift hits them alike; the first logging
interval of each run is warm-up and dropped. Prints medians and the on/off ratio (goal ≤ 1.02).

    python bench/families.py                      # GPU sizes (bf16 on a GPU)
    python bench/families.py --tiny --steps 12    # a quick smoke run on the CPU
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.utils.families import write_encoded_dataset  # noqa: E402
from trainer.config import validate_config  # noqa: E402
from trainer.events import read_events  # noqa: E402
from trainer.train import train  # noqa: E402

INTERVAL = 5


def flux(tmp: Path, tiny: bool, n: int = 16):
    from diffusers import FluxTransformer2DModel

    heads, head_dim, latent = (2, 16, 8) if tiny else (8, 64, 64)
    rope = [4, 4, 8] if tiny else [8, 28, 28]
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2 if tiny else 4, num_single_layers=4 if tiny else 8,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=heads * head_dim,
        pooled_projection_dim=64, axes_dims_rope=rope,
    )
    model.save_pretrained(tmp / "flux")
    text = 16 if tiny else 128
    data = write_encoded_dataset(tmp / "flux-data", torch.randn(n, 16, latent, latent), {
        "prompt_embeds": torch.randn(n, text, heads * head_dim), "pooled_prompt_embeds": torch.randn(n, 64)})
    depth = (2 + 4) if tiny else (4 + 8)
    return tmp / "flux", data, (depth // 3, depth - 2), f"Flux {depth} blocks × {heads * head_dim}, {latent}² latents"


def wan(tmp: Path, tiny: bool, n: int = 16):
    from diffusers import WanTransformer3DModel

    heads, head_dim, frames, latent, layers = (2, 12, 2, 8, 6) if tiny else (8, 64, 5, 32, 12)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16, out_channels=16,
        text_dim=heads * head_dim, freq_dim=256, ffn_dim=4 * heads * head_dim, num_layers=layers, rope_max_seq_len=1024,
    )
    model.save_pretrained(tmp / "wan")
    text = 16 if tiny else 226
    data = write_encoded_dataset(tmp / "wan-data", torch.randn(n, 16, frames, latent, latent), {
        "prompt_embeds": torch.randn(n, text, heads * head_dim)})
    return tmp / "wan", data, (layers // 3, layers - 2), f"Wan {layers} blocks × {heads * head_dim}, {frames}×{latent}² latents"


def run(family, model_dir, data_dir, out_dir, pair, steps, batch, precision, checkpointing, layersync) -> tuple[list[float], float | None]:
    config = validate_config({
        "model_family": family, "pretrained_model_name_or_path": str(model_dir), "instance_data_dir": str(data_dir),
        "output_dir": str(out_dir), "max_train_steps": steps, "train_batch_size": batch, "mixed_precision": precision,
        "gradient_checkpointing": checkpointing, "logging_steps": INTERVAL, "validation_steps": 0, "checkpointing_steps": 0,
        "layersync_enabled": layersync, "resolution": 16,
        **({"layersync_student_block": pair[0], "layersync_teacher_block": pair[1]} if layersync else {}),
    })
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    assert train(config, out_dir) == 0, read_events(out_dir)[-1]
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    times = [e["step_time"] for e in read_events(out_dir) if e["event"] == "metric" and "step_time" in e][1:]
    return times, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="CPU-sized models")
    parser.add_argument("--families", default="flux,wan")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    precision = "bf16" if torch.cuda.is_available() else "no"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for family in args.families.split(","):
            torch.manual_seed(0)
            model_dir, data_dir, pair, what = {"flux": flux, "wan": wan}[family](tmp, args.tiny)
            ways = [(ckpt, on) for ckpt in (False, True) for on in (True, False)]
            times = {way: [] for way in ways}
            peaks = {way: 0.0 for way in ways}
            for r in range(args.rounds):
                for i in range(len(ways)):
                    way = ways[(i + r) % len(ways)]
                    t, peak = run(family, model_dir, data_dir, tmp / f"{family}-{r}-{way}", pair, args.steps,
                                  args.batch_size, precision, way[0], way[1])
                    times[way] += t
                    peaks[way] = max(peaks[way], peak or 0.0)
            median = {way: statistics.median(t) for way, t in times.items()}
            print(f"{device}; {what}; batch {args.batch_size}; {precision}; student→teacher {pair[0]}→{pair[1]}; "
                  f"{args.rounds} rounds × {args.steps} steps")
            for ckpt in (False, True):
                on, off = median[(ckpt, True)], median[(ckpt, False)]
                mem = (f"peak {peaks[(ckpt, True)]:.0f}/{peaks[(ckpt, False)]:.0f} MiB on/off"
                       if torch.cuda.is_available() else "peak memory n/a (CPU)")
                print(f"  gradient checkpointing {str(ckpt):5s}  on {on * 1000:8.2f} ms  off {off * 1000:8.2f} ms  "
                      f"ratio on/off {on / off:.3f} (goal ≤ 1.02)  {mem}")
                results[f"{family}/ckpt={ckpt}"] = {"on_s": on, "off_s": off, "ratio": on / off,
                                                    "peak_on_mib": peaks[(ckpt, True)], "peak_off_mib": peaks[(ckpt, False)]}
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()

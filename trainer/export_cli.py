"""``layersync export RUN_DIR``: list a run's outputs, or export them for use elsewhere.
Importing this module does not import torch (trainer/export.py is imported once the arguments are valid)."""

import argparse
import sys
from pathlib import Path

from trainer.outputs import FINAL, list_checkpoints


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layersync export",
        description="A run's weights for use elsewhere. Without --pipeline or --kohya: list its checkpoints and final weights.",
        epilog="Examples: layersync export runs/7 --pipeline my-pipeline (a full fine-tune); "
               "layersync export runs/8 --pipeline my-pipeline --fuse-lora; layersync export runs/9 --kohya my_lora.safetensors",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="the run's output folder")
    parser.add_argument("--checkpoint", metavar="NAME",
                        help=f"which weights: {FINAL} or step_XXXXXXX (default: the newest, {FINAL} once the run completed)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--pipeline", metavar="OUT", type=Path,
                      help="write the whole diffusers pipeline the run trained from, with the trained weights, to OUT")
    what.add_argument("--kohya", metavar="FILE", type=Path,
                      help="write a LoRA in the kohya / ComfyUI key layout (UNet families: sdxl, kolors)")
    parser.add_argument("--fuse-lora", action="store_true", help="with --pipeline, for a LoRA run: fuse the adapter into the weights")
    return parser


def export_main(argv: list[str] | None = None) -> int:
    parser = build_export_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.fuse_lora and args.pipeline is None:
        parser.error("--fuse-lora goes with --pipeline OUT")
    if not args.run_dir.is_dir():
        print(f"error: {args.run_dir} is not a folder: give a run's output folder", file=sys.stderr)
        return 2
    if args.pipeline is None and args.kohya is None:
        found = list_checkpoints(args.run_dir)
        if not found:
            print(f"{args.run_dir} holds no checkpoint and no final/ weights yet", file=sys.stderr)
            return 1
        for output in found:
            print(f"{output['name']:<14} step {output['step']:>8}  {output['kind']:<4}  {output['path']}")
        return 0
    from trainer.export import ExportError, export_kohya, export_pipeline

    try:
        if args.pipeline is not None:
            export_pipeline(args.run_dir, args.pipeline, fuse_lora=args.fuse_lora, checkpoint=args.checkpoint)
        else:
            export_kohya(args.run_dir, args.kohya, checkpoint=args.checkpoint)
    except (ExportError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

"""The ``layersync`` console script: ``serve`` (the web app), ``train`` and ``families`` (the trainer's).

Importing this module does not import torch: ``train`` imports it only once a config is valid.
"""

import argparse
import ipaddress
import sys
from pathlib import Path

import uvicorn

from app.datadir import DataDirInUse, check_data_dir
from app.main import create_app
from app.settings import Settings
from app.studycli import study_main
from trainer.cli import probe_main, train_main
from trainer.export_cli import export_main
from trainer.families import FAMILIES

SHUTDOWN_SECONDS = 3

COMMANDS = {
    "serve": "start the web app (see layersync serve --help)",
    "train": "train a model (see layersync train --help)",
    "families": "list the model families",
    "probe": "map a model's blocks and suggest a student → teacher pair (see layersync probe --help)",
    "study": "train paired runs here and report whether LayerSync helped (see layersync study --help)",
    "export": "list a run's weights, or export them as a diffusers pipeline or a kohya LoRA (see layersync export --help)",
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


class Server(uvicorn.Server):
    """Ends the live event streams when asked to stop: they never end by themselves, and uvicorn
    waits for open responses (SHUTDOWN_SECONDS at most). Browsers reconnect with Last-Event-ID."""

    def handle_exit(self, sig, frame):
        broker = getattr(self.config.app.state, "broker", None)
        if broker is not None:
            broker.close_all_threadsafe()
        super().handle_exit(sig, frame)


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="layersync serve", description="Serve LayerSync Studio: pages, API and run scheduler.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--data-dir", type=Path, help="database and run folders (default: ./layersync-data, or LAYERSYNC_DATA_DIR)")
    args = parser.parse_args(argv)
    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
    if not is_loopback(args.host) and not settings.token:
        print(
            f"warning: listening on {args.host} without LAYERSYNC_TOKEN: anyone who can reach this address can "
            "start, cancel and delete runs; set LAYERSYNC_TOKEN to a long random secret (e.g. the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))') to require a login, or use "
            "--host 127.0.0.1 and an SSH tunnel",
            file=sys.stderr,
        )
    try:
        check_data_dir(settings)  # the lifespan takes the lock; this says why in one line instead of a traceback
    except DataDirInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"LayerSync Studio on http://{args.host}:{args.port}/ (data in {settings.data_dir})", file=sys.stderr)
    config = uvicorn.Config(create_app(settings), host=args.host, port=args.port, timeout_graceful_shutdown=SHUTDOWN_SECONDS)
    server = Server(config)
    server.run()
    return 0 if server.started else 1  # it did not start (uvicorn said why): the port taken, the data dir locked


def main(argv: list[str] | None = None) -> int:
    """``layersync serve …``, ``layersync train …``, ``layersync families``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: layersync COMMAND [options]\n\ncommands:", file=sys.stderr)
        for name, text in COMMANDS.items():
            print(f"  {name:10s} {text}", file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    if argv[0] == "serve":
        return serve_main(argv[1:])
    if argv[0] == "families":
        for family in FAMILIES.values():
            media = "" if family.media == "image" or family.media in family.label else f" ({family.media})"
            if family.unsupported:
                print(f"{family.name:17s} {family.label}: not trainable with LayerSync ({family.unsupported})")
            else:
                print(f"{family.name:17s} {family.label}{media} — {family.diffusers_class}")
        return 0
    if argv[0] == "probe":
        return probe_main(argv[1:])
    if argv[0] == "study":
        return study_main(argv[1:])
    if argv[0] == "export":
        return export_main(argv[1:])
    return train_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

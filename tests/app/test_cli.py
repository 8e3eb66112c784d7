import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from app.cli import Server, main
from tests.utils.waiting import PATIENCE_S, wait_until

ROOT = Path(__file__).resolve().parents[2]


def test_import_app_main_does_not_import_torch_or_diffusers():
    code = (
        "import sys, app.main, app.cli; "
        "bad = [m for m in ('torch', 'diffusers') if m in sys.modules]; "
        "assert not bad, f'the server imported {bad}'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_families_and_unknown_commands(capsys):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("demo ") and "flux              Flux / Flux Kontext — FluxTransformer2DModel" in out
    assert "stable_cascade    Stable Cascade: not trainable with LayerSync" in out
    assert main(["trian"]) == 2
    assert "unknown command 'trian': choose one of serve, train, families" in capsys.readouterr().err


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("localhost", False), ("::1", False),
                                          ("0.0.0.0", True), ("192.168.1.5", True), ("myhost", True)])
def test_serve_warns_when_it_listens_beyond_this_machine(monkeypatch, capsys, tmp_path, host, warned):
    configs = []

    def run(server):  # instead of serving: started, then asked to stop
        configs.append(server.config)
        server.started = True

    monkeypatch.setattr(Server, "run", run)
    assert main(["serve", "--host", host, "--port", "8123", "--data-dir", str(tmp_path)]) == 0
    assert (configs[0].host, configs[0].port) == (host, 8123)
    assert configs[0].app.state is not None and configs[0].timeout_graceful_shutdown == 3
    assert ("anyone who can reach this address" in capsys.readouterr().err) == warned


@pytest.mark.sqlite_only("the database file in the data dir")
def test_serve_starts_a_server_on_loopback(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    env = dict(os.environ, LAYERSYNC_WORKER_SLOTS="0")  # the run stays queued: no worker to clean up
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        def health() -> dict:
            assert server.poll() is None, server.stderr.read().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=PATIENCE_S) as response:
                return json.load(response)

        answer = wait_until(health, what="the server to answer /api/health", interval=0.1, ignore=(OSError,))
        run = json.load(urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/api/runs", data=b"{}", headers={"content-type": "application/json"})))
        stream = urllib.request.urlopen(f"http://127.0.0.1:{port}{run['url']}/events", timeout=PATIENCE_S)  # a live stream
    finally:
        server.terminate()
        server.wait(timeout=PATIENCE_S)
    # the open stream ends instead of holding the shutdown up until uvicorn gives up on it (which it logs
    # as an error), and nothing else is logged as an error
    assert stream.read() is not None
    errors = server.stderr.read().decode()
    assert "timeout graceful shutdown exceeded" not in errors and "ERROR" not in errors
    assert answer["status"] == "ok" and (tmp_path / "data" / "layersync.db").is_file()

"""The device a run trains on, as its ``running`` status event says it (the run page shows it), and a
real run's checkpoint as the server lists and sends it."""

import io
import tarfile

import torch

from app import downloads
from tests.utils.factories import fast_config
from trainer.config import validate_config
from trainer.devices import describe
from trainer.events import read_events
from trainer.outputs import list_checkpoints
from trainer.train import train


def test_the_device_in_words(monkeypatch):
    assert describe(torch.device("cpu")) == "cpu"
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"NVIDIA H200 #{index}")
    assert describe(torch.device("cuda")) == "cuda:0 (NVIDIA H200 #0)"
    assert describe(torch.device("cuda", 1)) == "cuda:1 (NVIDIA H200 #1)"


def test_a_runs_status_says_its_device_and_its_checkpoint_downloads_whole(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    config = validate_config(fast_config(tiny_model_dir, out, max_train_steps=2, logging_steps=1, validation_steps=0,
                                         checkpointing_steps=0))
    assert train(config, out) == 0
    [running] = [e for e in read_events(out) if e["event"] == "status" and e["status"] == "running"]
    assert running["device"] == describe(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    assert running["max_train_steps"] == 2

    listed = downloads.run_checkpoints(5, out)
    assert [c["name"] for c in listed] == [c["name"] for c in list_checkpoints(out)]  # final/ too, where written
    assert (listed[0]["name"], listed[0]["step"], listed[0]["kind"]) == ("step_0000002", 2, "full")
    download = downloads.checkpoint_download(5, out, "step_0000002")
    data = b"".join(downloads.body(download))
    assert len(data) == listed[0]["size_bytes"]
    folder = out / "checkpoints" / "step_0000002"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    expected = {f"run-5-step_0000002/{p.relative_to(folder)}": p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert files == expected and "run-5-step_0000002/transformer/diffusion_pytorch_model.safetensors" in files

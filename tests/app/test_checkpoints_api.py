"""GET /api/runs/{id}/checkpoints and each checkpoint's download: the bytes are the files' own (a LoRA's
safetensors as it is, a folder's tar whose members equal the folder), and nothing outside the run's
folder is ever listed or sent.

The checkpoints are written here as the trainer lays them out (trainer/checkpoint.py, trainer/outputs.py)
with random bytes for weights: what is tested is the listing and the transfer, not torch.
"""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from app import downloads
from app.models import SQL_INT_MAX


def new_run(client) -> tuple[int, Path]:
    response = client.post("/api/runs", json={"max_train_steps": 10})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    folder = client.app.state.settings.runs_dir / str(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    return run_id, folder


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def checkpoint(run_dir: Path, step: int, *, lora: str | None = None, name: str | None = None) -> Path:
    """A complete checkpoint folder: weights (random bytes), optimizer, config and state.json."""
    folder = run_dir / (name or f"checkpoints/step_{step:07d}")
    if lora == "diffusers":
        write(folder / "pytorch_lora_weights.safetensors", os.urandom(3000 + step))
    elif lora == "peft":
        write(folder / "lora" / "adapter_model.safetensors", os.urandom(2000 + step))
    else:
        write(folder / "transformer" / "config.json", b'{"_class_name": "DemoDiT"}')
        write(folder / "transformer" / "diffusion_pytorch_model.safetensors", os.urandom(5000 + step))
    write(folder / "optimizer.pt", os.urandom(700))
    write(folder / "config.json", b"{}")
    write(folder / "state.json", json.dumps({"step": step}).encode())
    return folder


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tar_files(data: bytes) -> tuple[list[str], dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        names = tar.getnames()
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    return names, files


def test_a_run_without_checkpoints_lists_none(client):
    run_id, _ = new_run(client)
    response = client.get(f"/api/runs/{run_id}/checkpoints")
    assert response.status_code == 200
    assert response.json() == []


def test_the_list_oldest_first_with_kind_size_and_url(client):
    run_id, run_dir = new_run(client)
    checkpoint(run_dir, 20, lora="diffusers")
    checkpoint(run_dir, 10, lora="peft")
    checkpoint(run_dir, 20, lora="diffusers", name="final")
    (run_dir / "checkpoints" / ".tmp_step_0000030").mkdir()  # being written: not listed
    write(run_dir / "checkpoints" / "step_0000040" / "optimizer.pt", b"x")  # no state.json yet: not listed
    listed = client.get(f"/api/runs/{run_id}/checkpoints").json()
    assert [(c["name"], c["step"], c["kind"]) for c in listed] == [
        ("step_0000010", 10, "lora"), ("step_0000020", 20, "lora"), ("final", 20, "lora")]
    assert listed[0]["size_bytes"] == (run_dir / "checkpoints/step_0000010/lora/adapter_model.safetensors").stat().st_size
    assert listed[1]["size_bytes"] == (run_dir / "checkpoints/step_0000020/pytorch_lora_weights.safetensors").stat().st_size
    assert listed[0]["download_url"] == f"/api/runs/{run_id}/checkpoints/step_0000010/download"
    assert set(listed[0]) == {"name", "step", "kind", "size_bytes", "download_url"}


@pytest.mark.parametrize("layout", ["diffusers", "peft"])
def test_a_lora_downloads_as_its_safetensors_byte_for_byte(client, layout):
    run_id, run_dir = new_run(client)
    folder = checkpoint(run_dir, 10, lora=layout)
    weights = folder / ("pytorch_lora_weights.safetensors" if layout == "diffusers" else "lora/adapter_model.safetensors")
    [entry] = client.get(f"/api/runs/{run_id}/checkpoints").json()
    response = client.get(entry["download_url"])
    assert response.status_code == 200
    assert response.content == weights.read_bytes()
    assert int(response.headers["content-length"]) == entry["size_bytes"] == weights.stat().st_size
    assert f'filename="run-{run_id}-step_0000010-lora.safetensors"' in response.headers["content-disposition"]


def test_a_full_checkpoint_downloads_as_a_tar_equal_to_its_folder(client):
    run_id, run_dir = new_run(client)
    folder = checkpoint(run_dir, 10)
    write(folder / "transformer" / ("a-long-shard-name-" * 8 + ".safetensors"), os.urandom(1))  # > 100 chars: a PAX header
    [entry] = client.get(f"/api/runs/{run_id}/checkpoints").json()
    assert entry["kind"] == "full"
    response = client.get(entry["download_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-tar"
    assert int(response.headers["content-length"]) == len(response.content) == entry["size_bytes"]
    names, files = tar_files(response.content)
    top = f"run-{run_id}-step_0000010"
    assert names[0] == top and f"{top}/transformer" in names
    assert files == {f"{top}/{name}": data for name, data in folder_files(folder).items()}


def test_the_tar_is_streamed_in_chunks_and_its_length_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(downloads, "CHUNK", 1000)
    run_dir = tmp_path / "run"
    folder = checkpoint(run_dir, 3)
    write(folder / "empty.bin", b"")
    write(folder / "block.bin", os.urandom(512))  # a member exactly one block long: no padding
    download = downloads.checkpoint_download(7, run_dir, "step_0000003")
    chunks = list(downloads.body(download))
    assert max(len(chunk) for chunk in chunks) <= 1000 + 2 * downloads.RECORD  # never a whole file at once
    data = b"".join(chunks)
    assert len(data) == download.size and len(data) % tarfile.RECORDSIZE == 0
    _, files = tar_files(data)
    assert hashlib.sha256(files["run-7-step_0000003/transformer/diffusion_pytorch_model.safetensors"]).digest() == \
        hashlib.sha256((folder / "transformer/diffusion_pytorch_model.safetensors").read_bytes()).digest()
    assert files["run-7-step_0000003/empty.bin"] == b""


def test_the_final_weights_of_a_full_fine_tune(client):
    run_id, run_dir = new_run(client)
    checkpoint(run_dir, 10)
    final = write(run_dir / "final" / "diffusion_pytorch_model.safetensors", os.urandom(999)).parent
    write(final / "config.json", b"{}")
    write(final / "state.json", b'{"step": 10}')
    listed = client.get(f"/api/runs/{run_id}/checkpoints").json()
    assert [c["name"] for c in listed] == ["step_0000010", "final"]
    _, files = tar_files(client.get(listed[1]["download_url"]).content)
    assert files == {f"run-{run_id}-final/{name}": data for name, data in folder_files(final).items()}


def test_unknown_checkpoints_and_runs_are_404_in_words(client):
    run_id, run_dir = new_run(client)
    checkpoint(run_dir, 10)
    missing = client.get(f"/api/runs/{run_id}/checkpoints/step_0000099/download")
    assert missing.status_code == 404
    assert missing.json()["detail"] == (f"run {run_id} has no checkpoint 'step_0000099' (it has: step_0000010): "
                                        f"list them with GET /api/runs/{run_id}/checkpoints")
    for run in (999, SQL_INT_MAX + 1):
        assert client.get(f"/api/runs/{run}/checkpoints").status_code == 404
        assert client.get(f"/api/runs/{run}/checkpoints/step_0000010/download").status_code == 404
    assert client.get(f"/api/runs/{run_id}/checkpoints/{'x' * 65}/download").status_code == 422


@pytest.mark.parametrize("name", ["..", "../..", "%2e%2e", "checkpoints", "state.json", "checkpoints%2Fstep_0000010",
                                  "..%2F..%2Fsecret", "%2Fetc%2Fpasswd"])
def test_names_that_climb_out_are_refused(client, name):
    run_id, run_dir = new_run(client)
    checkpoint(run_dir, 10)
    response = client.get(f"/api/runs/{run_id}/checkpoints/{name}/download")
    # 404: no checkpoint of that name; 422: a URL the client normalised into another route's (a run id "checkpoints")
    assert response.status_code in (404, 422), response.text
    assert "detail" in response.json()


def test_symlinks_out_of_the_run_folder_are_neither_listed_nor_sent(client, tmp_path):
    run_id, run_dir = new_run(client)
    outside = checkpoint(tmp_path / "elsewhere", 5, lora="diffusers")
    secret = write(tmp_path / "secret.txt", b"secret words")
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_0000005").symlink_to(outside, target_is_directory=True)  # a folder outward
    lora = checkpoint(run_dir, 6, lora="diffusers")
    (lora / "pytorch_lora_weights.safetensors").unlink()
    (lora / "pytorch_lora_weights.safetensors").symlink_to(outside / "pytorch_lora_weights.safetensors")  # a file outward
    full = checkpoint(run_dir, 7)
    (full / "leak.txt").symlink_to(secret)  # inside a tarred folder: left out
    (full / "inner.json").symlink_to(full / "config.json")  # pointing inside: sent as that file
    listed = client.get(f"/api/runs/{run_id}/checkpoints").json()
    assert [c["name"] for c in listed] == ["step_0000007"]
    for name in ("step_0000005", "step_0000006"):
        assert client.get(f"/api/runs/{run_id}/checkpoints/{name}/download").status_code == 404
    response = client.get(f"/api/runs/{run_id}/checkpoints/step_0000007/download")
    assert response.status_code == 200 and b"secret words" not in response.content
    _, files = tar_files(response.content)
    top = f"run-{run_id}-step_0000007"
    assert f"{top}/leak.txt" not in files
    assert files[f"{top}/inner.json"] == b"{}"


def test_a_run_folder_that_is_a_symlink_outward_serves_nothing_outside(client, tmp_path):
    run_id, run_dir = new_run(client)
    run_dir.rmdir()
    outside = tmp_path / "other-run"
    checkpoint(outside, 1, lora="diffusers")
    run_dir.symlink_to(outside, target_is_directory=True)
    # the run's folder itself is the server's to choose; its contents are served from where it resolves
    listed = client.get(f"/api/runs/{run_id}/checkpoints").json()
    assert [c["name"] for c in listed] == ["step_0000001"]


def test_a_file_cut_short_while_it_is_sent_ends_the_stream_with_an_error(tmp_path):
    run_dir = tmp_path / "run"
    folder = checkpoint(run_dir, 3)
    download = downloads.checkpoint_download(7, run_dir, "step_0000003")
    (folder / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"short")
    with pytest.raises(OSError, match="became shorter while it was sent"):
        b"".join(downloads.body(download))

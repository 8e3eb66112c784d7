"""A run's checkpoints as downloads: the list the API answers, and each one as a single stream.

A LoRA checkpoint downloads as its one safetensors file, as it is (``pytorch_lora_weights.safetensors``,
or ``lora/adapter_model.safetensors`` in runs from before the diffusers layout); a full checkpoint (or
the final weights of a full fine-tune) as an uncompressed tar of its folder, written while it is sent:
nothing is read into memory beyond one chunk, and the tar's length is known before the first byte, so
the answer has a Content-Length (a browser shows the download's progress, a client detects a cut).

Nothing outside the run's folder is ever served: a checkpoint is found by its name among the ones
``trainer.outputs.list_checkpoints`` lists (never by a path a client sends), a folder or weight file
whose real path (symlinks resolved) leaves the run's folder is refused, and inside a folder a symlink
pointing outward is left out of the tar.
"""

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.paths import inside
from app.runs import NotFound
from trainer.outputs import LORA_WEIGHTS, OLD_LORA_WEIGHTS, list_checkpoints

CHUNK = 1 << 20  # bytes read and sent at a time
BLOCK = tarfile.BLOCKSIZE  # 512: a tar member's header and data are padded to whole blocks
RECORD = tarfile.RECORDSIZE  # 10240: the archive is padded to whole records, as tarfile writes it


class CheckpointNotFound(NotFound):
    """No such checkpoint in the run's folder (HTTP 404)."""


@dataclass
class Download:
    """What one checkpoint's download sends: ``file`` as it is, or a tar of ``members`` under ``folder``."""

    filename: str  # the name a browser saves it under
    media_type: str
    size: int  # bytes of the answer's body
    file: Path | None = None
    folder: Path | None = None
    members: list[tuple[tarfile.TarInfo, Path | None]] = field(default_factory=list)  # (header, file or None for a dir)


def lora_file(folder: Path) -> Path | None:
    """The LoRA weights of a checkpoint folder: the diffusers file first, else the older PEFT one."""
    for name in (LORA_WEIGHTS, OLD_LORA_WEIGHTS):
        if (folder / name).is_file():
            return folder / name
    return None


def _checkpoint(run_dir: Path, entry: dict) -> Path | None:
    """The checkpoint's folder, symlinks resolved, when it lies inside the (resolved) run folder."""
    path = Path(entry["path"])
    return inside(run_dir, path.relative_to(run_dir)) if path.is_relative_to(run_dir) else None


def _tar_members(run_dir: Path, folder: Path, arcname: str) -> list[tuple[tarfile.TarInfo, Path | None]]:
    """Headers of the folder's directories and regular files, sorted, under ``arcname``. A symlink to a
    file inside the run's folder is sent as that file; any other symlink (outward, to a folder, a loop)
    is left out."""
    members = []

    def add(path: Path, name: str) -> None:
        target = inside(run_dir, path.relative_to(run_dir)) if path.is_symlink() else path
        if target is None:
            return  # a symlink out of the run's folder (or a loop): not ours to send
        stat = target.stat()
        info = tarfile.TarInfo(name)
        info.mtime, info.mode = int(stat.st_mtime), stat.st_mode & 0o777
        if target.is_dir() and not path.is_symlink():
            info.type = tarfile.DIRTYPE
            members.append((info, None))
            for child in sorted(path.iterdir(), key=lambda p: p.name):
                add(child, f"{name}/{child.name}")
        elif target.is_file():
            info.size = stat.st_size
            members.append((info, target))

    add(folder, arcname)
    return members


def _header(info: tarfile.TarInfo) -> bytes:
    # PAX: names of any length, in UTF-8; tobuf gives the header blocks (with an extended header when needed)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int, unit: int) -> int:
    return -size % unit


def tar_size(members: list[tuple[tarfile.TarInfo, Path | None]]) -> int:
    """The exact length of the tar ``tar_chunks`` writes for these members."""
    size = sum(len(_header(info)) + info.size + _padding(info.size, BLOCK) for info, _ in members) + 2 * BLOCK
    return size + _padding(size, RECORD)


def tar_chunks(members: list[tuple[tarfile.TarInfo, Path | None]]) -> Iterator[bytes]:
    """The tar of ``members``, a chunk at a time; a file is read ``CHUNK`` bytes at a time, never whole.

    A file that is shorter than when it was listed ends the stream with an error rather than sending a
    tar whose member is wrong (checkpoints are written aside and renamed, so they do not change)."""
    written = 0
    for info, path in members:
        header = _header(info)
        yield header
        written += len(header)
        if path is None:
            continue
        yield from file_chunks(path, info.size)
        pad = _padding(info.size, BLOCK)
        written += info.size + pad
        if pad:
            yield bytes(pad)
    end = 2 * BLOCK + _padding(written + 2 * BLOCK, RECORD)
    yield bytes(end)


def file_chunks(path: Path, size: int) -> Iterator[bytes]:
    """One file, ``CHUNK`` bytes at a time: the ``size`` bytes it had when listed."""
    left = size
    with open(path, "rb") as file:
        while left:
            chunk = file.read(min(CHUNK, left))
            if not chunk:
                raise OSError(f"{path} became shorter while it was sent: download the checkpoint again")
            left -= len(chunk)
            yield chunk


def _download(run_id: int, run_dir: Path, entry: dict) -> Download | None:
    """The download of one listed checkpoint, or None when it leads out of the run's folder."""
    folder = _checkpoint(run_dir, entry)
    if folder is None or not folder.is_dir():
        return None
    stem = f"run-{run_id}-{entry['name']}"
    if entry["kind"] == "lora":
        weights = lora_file(folder)
        target = inside(run_dir, weights.relative_to(run_dir.resolve())) if weights is not None else None
        if target is None or not target.is_file():
            return None
        return Download(filename=f"{stem}-lora.safetensors", media_type="application/octet-stream",
                        size=target.stat().st_size, file=target)
    members = _tar_members(run_dir.resolve(), folder, stem)
    return Download(filename=f"{stem}.tar", media_type="application/x-tar", size=tar_size(members), folder=folder,
                    members=members)


def download_url(run_id: int, name: str) -> str:
    return f"/api/runs/{run_id}/checkpoints/{name}/download"


def run_checkpoints(run_id: int, output_dir: str | Path) -> list[dict]:
    """The run's checkpoints and final weights, oldest first, as the API answers them:
    ``[{"name", "step", "kind": "lora" | "full", "size_bytes", "download_url"}]``, ``size_bytes`` being
    the length of the download (the safetensors file, or the tar of the folder)."""
    if not output_dir or not Path(output_dir).is_dir():
        return []
    run_dir = Path(output_dir).resolve()
    answer = []
    for entry in list_checkpoints(run_dir):
        download = _download(run_id, run_dir, entry)
        if download is not None:
            answer.append({"name": entry["name"], "step": entry["step"], "kind": entry["kind"], "size_bytes": download.size,
                           "download_url": download_url(run_id, entry["name"])})
    return answer


def checkpoint_download(run_id: int, output_dir: str | Path, name: str) -> Download:
    """The download of the checkpoint called ``name`` (as listed: ``step_0000100``, ``final``); raises
    CheckpointNotFound for any other name, or one that leads out of the run's folder."""
    run_dir = Path(output_dir).resolve() if output_dir else None
    entries = list_checkpoints(run_dir) if run_dir is not None and run_dir.is_dir() else []
    entry = next((e for e in entries if e["name"] == name), None)
    download = _download(run_id, run_dir, entry) if entry is not None else None
    if download is None:
        names = ", ".join(e["name"] for e in entries) or "none yet"
        raise CheckpointNotFound(f"run {run_id} has no checkpoint {name!r} (it has: {names}): list them with "
                                 f"GET /api/runs/{run_id}/checkpoints")
    return download


def body(download: Download) -> Iterator[bytes]:
    """The download's bytes, a chunk at a time."""
    if download.file is not None:
        return file_chunks(download.file, download.size)
    return tar_chunks(download.members)

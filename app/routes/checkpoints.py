"""A run's checkpoints under /api: the list, and each one as a download."""

from typing import Annotated, Literal

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel

from app import downloads, errors
from app.routes.api import RunDep

router = APIRouter(prefix="/api", tags=["api"], responses=errors.INVALID)

# a checkpoint's name as listed (step_0000100, final); anything longer names none
CheckpointName = Annotated[str, Path(max_length=64, description="The checkpoint's name as listed, e.g. step_0000100 or final.")]
NOT_FOUND = {404: {"model": errors.Message, "description": "No such run, or no such checkpoint of it"}}


class CheckpointPublic(BaseModel):
    name: str  # step_0000100, or final (the last weights, in the layout diffusers loads)
    step: int
    kind: Literal["lora", "full"]
    size_bytes: int  # the download's length: the LoRA's safetensors file, or the tar of the folder
    download_url: str


@router.get("/runs/{run_id}/checkpoints", responses=NOT_FOUND)
def list_checkpoints(run: RunDep) -> list[CheckpointPublic]:
    """The run's complete checkpoints and final weights, oldest first, each with its download's size and URL."""
    return downloads.run_checkpoints(run.id, run.output_dir)


@router.get("/runs/{run_id}/checkpoints/{name}/download", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}, "application/x-tar": {}}}, **NOT_FOUND})
def download_checkpoint(run: RunDep, name: CheckpointName):
    """One checkpoint as one file: a LoRA's safetensors as it is, a full checkpoint's folder as a tar (streamed)."""
    download = downloads.checkpoint_download(run.id, run.output_dir, name)
    if download.file is not None:  # Starlette streams it in chunks, with Range requests and a Content-Length
        return FileResponse(download.file, media_type=download.media_type, filename=download.filename)
    return StreamingResponse(downloads.body(download), media_type=download.media_type, headers={
        "Content-Length": str(download.size), "Content-Disposition": f'attachment; filename="{download.filename}"'})

"""Reading a training folder: images, videos or audio, each with a same-named caption file.

Unreadable files are skipped and named; the caller reports them. Pixels come back in [-1, 1].
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif"}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}


@dataclass(frozen=True)
class Example:
    path: Path  # a file, or a folder of frames (video)
    caption: str
    caption_found: bool


def list_examples(root: Path, media: str, caption_extension: str = ".txt") -> list[Example]:
    """Media files (and, for video, folders of frame images) under ``root``, sorted by path."""
    suffixes = {"image": IMAGE_SUFFIXES, "video": VIDEO_SUFFIXES, "audio": AUDIO_SUFFIXES}[media]
    found = []
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # hidden folders (our own cache among them)
        if path.is_file() and path.suffix.lower() in suffixes:
            found.append(path)
        elif media == "video" and path.is_dir() and _is_frame_folder(path):
            found.append(path)  # a clip given as a folder of frame images
    examples = []
    for path in found:
        caption_file = path.with_suffix(caption_extension) if path.is_file() else path.parent / f"{path.name}{caption_extension}"
        caption, ok = "", caption_file.is_file()
        if ok:
            caption = caption_file.read_text(encoding="utf-8", errors="replace").strip()
        examples.append(Example(path, caption, ok))
    return examples


def _is_frame_folder(path: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir() if p.is_file())


def _to_pixels(image, resolution: int, center_crop: bool, size: tuple[int, int] | None = None) -> torch.Tensor:
    """PIL image → (3, H, W) in [-1, 1]: center-cropped to a square at ``resolution`` when ``center_crop``,
    else fitted to its aspect bucket ``size`` (w, h) (trainer/buckets.py), else resized to the square."""
    from PIL import Image, ImageOps

    from trainer.buckets import fit_to_bucket

    image = ImageOps.exif_transpose(image).convert("RGB")  # photos as the camera held them
    if center_crop:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        image = image.resize((resolution, resolution), Image.BICUBIC)
    elif size is not None:
        image = fit_to_bucket(image, size)
    else:
        image = image.resize((resolution, resolution), Image.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


EXIF_ORIENTATION = 0x0112
TURNED = {5, 6, 7, 8}  # EXIF orientations that swap width and height


def _oriented_size(image) -> tuple[int, int]:
    width, height = image.size
    return (height, width) if image.getexif().get(EXIF_ORIENTATION) in TURNED else (width, height)


def media_size(path: Path, media: str) -> tuple[int, int]:
    """(width, height) of an image, or of a clip's first frame, as it will be read (EXIF orientation applied),
    without decoding the pixels."""
    from PIL import Image

    if media == "video" and path.is_dir():
        path = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[0]
    elif media == "video" and path.suffix.lower() != ".gif":
        try:
            import av
        except ImportError:
            raise ValueError(f"reading {path.suffix} videos needs PyAV: pip install av, or give a folder of frames") from None
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return stream.codec_context.width, stream.codec_context.height
    with Image.open(path) as image:
        return _oriented_size(image)


def read_image(path: Path, resolution: int, center_crop: bool, size: tuple[int, int] | None = None) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return _to_pixels(image, resolution, center_crop, size)


def read_video(path: Path, resolution: int, center_crop: bool, num_frames: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The first ``num_frames`` frames → (3, num_frames, H, W). Frame folders and GIFs need only Pillow;
    other containers need PyAV (pip install av)."""
    from PIL import Image, ImageSequence

    frames = []
    if path.is_dir():
        for frame_path in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:num_frames]:
            with Image.open(frame_path) as image:
                frames.append(_to_pixels(image, resolution, center_crop, size))
    elif path.suffix.lower() == ".gif":
        with Image.open(path) as image:
            for frame in ImageSequence.Iterator(image):
                frames.append(_to_pixels(frame.copy(), resolution, center_crop, size))
                if len(frames) == num_frames:
                    break
    else:
        try:
            import av
        except ImportError:
            raise ValueError(f"reading {path.suffix} videos needs PyAV: pip install av, or give a folder of frames") from None
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                frames.append(_to_pixels(frame.to_image(), resolution, center_crop, size))
                if len(frames) == num_frames:
                    break
    if len(frames) < num_frames:
        raise ValueError(f"has {len(frames)} frames, fewer than num_frames={num_frames}")
    return torch.stack(frames, dim=1)


def read_audio(path: Path, sample_rate: int, duration: float, channels: int = 2) -> torch.Tensor:
    """The first ``duration`` seconds at ``sample_rate`` → (channels, samples) in [-1, 1] (zero-padded).
    WAV needs nothing extra; other formats need soundfile (pip install soundfile)."""
    if path.suffix.lower() == ".wav":
        import wave

        with wave.open(str(path), "rb") as wav:
            rate, n_channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            raw = wav.readframes(wav.getnframes())
        dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
        if dtype is None:
            raise ValueError(f"{width * 8}-bit WAV is not supported: save it as 16-bit PCM")
        data = np.frombuffer(raw, dtype=dtype).astype(np.float32)
        data = (data - 128) / 128 if width == 1 else data / float(np.iinfo(dtype).max)
        data = data.reshape(-1, n_channels).T
    else:
        try:
            import soundfile
        except ImportError:
            raise ValueError(f"reading {path.suffix} audio needs soundfile: pip install soundfile, or convert to WAV") from None
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        data = data.T
    audio = torch.from_numpy(np.ascontiguousarray(data))
    if rate != sample_rate:
        length = max(1, round(audio.shape[1] * sample_rate / rate))
        audio = torch.nn.functional.interpolate(audio[None], size=length, mode="linear", align_corners=False)[0]
    if audio.shape[0] != channels:
        audio = audio.mean(0, keepdim=True).expand(channels, -1)
    samples = int(round(duration * sample_rate))
    audio = audio[:, :samples]
    if audio.shape[1] < samples:
        audio = torch.nn.functional.pad(audio, (0, samples - audio.shape[1]))
    return audio.contiguous()

"""Plain-image IO for the single-pair command: PNG/JPEG (pillow), TIFF (tifffile), FLIR (flyr).

The only module of the core that touches image-file libraries (they are imported lazily so the
algorithm never needs them). Every failure is an :class:`InvalidInput` whose one-line message
starts with the file name. Writes are atomic (temp name in the same folder + ``os.replace``) so
an interrupted run never leaves a half-written output.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from cmsr.errors import InvalidInput

TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
JPEG_SUFFIXES = (".jpg", ".jpeg")


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise InvalidInput(f"{path}: file not found")
    if not path.is_file():
        raise InvalidInput(f"{path}: not a file")


def _read_flir(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(celsius (h, w) float32, optical (H, W, 3) uint8) if ``path`` is a FLIR radiometric JPEG."""
    import flyr

    try:
        thermogram = flyr.unpack(str(path))
        celsius = np.asarray(thermogram.celsius, dtype=np.float32)
        optical = np.asarray(thermogram.optical)
    except Exception:  # noqa: BLE001 - flyr raises assorted errors for non-FLIR JPEGs
        return None
    return celsius, optical


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG/JPEG/TIFF as (H, W) or (H, W, C), keeping its dtype (uint8, uint16, float)."""
    p = Path(path)
    _check_exists(p)
    try:
        if p.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            arr = np.asarray(tifffile.imread(str(p)))
            if arr.ndim == 3 and arr.shape[0] <= 16 < arr.shape[-1]:
                arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) -> (H, W, C)
        else:
            from PIL import Image

            with Image.open(p) as im:
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("1", "CMYK", "YCbCr"):
                    im = im.convert("L" if im.mode == "1" else "RGB")
                arr = np.asarray(im)
                if im.mode.startswith("I;16"):
                    arr = arr.astype(np.uint16)
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error means "unreadable"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidInput(f"{p}: cannot read image ({reason})") from exc
    if arr.size == 0:
        raise InvalidInput(f"{p}: cannot read image (no image data)")
    if arr.ndim not in (2, 3):
        raise InvalidInput(f"{p}: unsupported image shape {arr.shape}")
    return arr


def read_target(path: str | os.PathLike[str]) -> np.ndarray:
    """A single-band target: FLIR JPEG -> degrees C float32; PNG/TIFF -> its one band.

    A grey image stored as RGB (all bands equal) is accepted; a real colour image is refused.
    A grey+alpha image keeps the grey band and turns transparent pixels into NaN (nodata).
    """
    p = Path(path)
    _check_exists(p)
    if p.suffix.lower() in JPEG_SUFFIXES:
        got = _read_flir(p)
        if got is not None:
            return got[0]
    arr = read_image(p)
    if arr.ndim == 2:
        return arr
    bands = arr.shape[-1]
    if bands == 1:
        return arr[..., 0]
    if bands in (2, 4) and np.issubdtype(arr.dtype, np.integer):
        alpha = arr[..., -1]
        colour = arr[..., :-1]
        if bands == 2 or all(np.array_equal(colour[..., 0], colour[..., k]) for k in range(1, colour.shape[-1])):
            grey = colour[..., 0]
            if (alpha == 0).any():
                grey = np.where(alpha == 0, np.nan, grey.astype(np.float32))
            return grey
    if all(np.array_equal(arr[..., 0], arr[..., k]) for k in range(1, bands)):
        return arr[..., 0]
    raise InvalidInput(f"{p}: target must be a single-band image, got {bands} different bands")


def read_guide(path: str | os.PathLike[str]) -> np.ndarray:
    """A guide: FLIR JPEG -> its visible photo; PNG/JPEG/TIFF -> (H, W) or (H, W, C) as stored."""
    p = Path(path)
    _check_exists(p)
    if p.suffix.lower() in JPEG_SUFFIXES:
        got = _read_flir(p)
        if got is not None:
            return got[1]
    return read_image(p)


def _plain_file_mode() -> int:
    """The mode ``open(path, "w")`` would give (0o644 under the usual umask 022): ``mkstemp``'s
    0600 would hide the output from a viewer or server running as another user. Linux says the
    umask in /proc without changing it; elsewhere it is set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, ValueError, IndexError, StopIteration):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path, write: "callable[[Path], None]") -> None:  # type: ignore[valid-type]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, _plain_file_mode())
    except OSError:  # a file system without modes (some SMB/FAT mounts): keep what it gives
        pass
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_image(path: str | os.PathLike[str], image: np.ndarray, dtype: np.dtype | type | None = None) -> Path:
    """Write an (H, W) result atomically. TIFF: float32 (NaN kept). PNG: ``dtype`` (the target's
    integer dtype, uint8 or uint16), rounded and clipped, nodata written as 0."""
    p = Path(path)
    arr = np.asarray(image)
    suffix = p.suffix.lower()
    if not p.parent.exists():
        raise InvalidInput(f"{p}: output folder {p.parent} does not exist")
    if suffix in TIFF_SUFFIXES:
        import tifffile

        _atomic_write(p, lambda t: tifffile.imwrite(str(t), arr.astype(np.float32)))
        return p
    if suffix in PNG_SUFFIXES:
        from PIL import Image

        out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.uint8)
        if out_dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
            raise InvalidInput(
                f"{p}: PNG cannot hold a {out_dtype} target in its own units; write a .tif (float32) instead"
            )
        info = np.iinfo(out_dtype)
        vals = np.nan_to_num(np.round(arr.astype(np.float64)), nan=0.0)
        out = np.clip(vals, info.min, info.max).astype(out_dtype)
        _atomic_write(p, lambda t: Image.fromarray(out).save(t, format="PNG"))
        return p
    raise InvalidInput(f"{p}: unsupported output format {p.suffix!r} (use .png or .tif)")


def _flow_colours(disp: np.ndarray, max_mag: float) -> np.ndarray:
    """HSV flow coding (hue = direction, value = magnitude / max) as (H, W, 3) uint8 RGB."""
    dy, dx = disp[..., 0], disp[..., 1]
    hue = (np.arctan2(-dy, dx) / (2 * np.pi)) % 1.0
    val = np.clip(np.hypot(dx, dy) / max(max_mag, 1e-9), 0.0, 1.0)
    h6 = hue * 6.0
    i = np.floor(h6).astype(int) % 6
    f = h6 - np.floor(h6)
    p, q, t = np.zeros_like(val), val * (1 - f), val * f
    r = np.choose(i, [val, q, p, p, t, val])
    g = np.choose(i, [t, val, val, q, p, p])
    b = np.choose(i, [p, p, t, val, val, q])
    return (np.stack([r, g, b], -1) * 255).round().astype(np.uint8)


def write_displacement(
    path: str | os.PathLike[str], displacement: np.ndarray, background: np.ndarray | None = None
) -> Path:
    """Draw a learned (H, W, 2) (dy, dx) displacement field as a PNG a person can read.

    Left: colour coding (hue = direction, brightness = magnitude, scaled to the largest
    displacement). Right: the guide (or grey) with a grid of arrows, lengthened so that the
    largest is about one grid cell, and the true maximum written in the corner.
    """
    from PIL import Image, ImageDraw

    p = Path(path)
    disp = np.asarray(displacement, dtype=np.float64)
    if disp.ndim != 3 or disp.shape[-1] != 2:
        raise InvalidInput(f"{p}: displacement must be (H, W, 2), got {disp.shape}")
    h, w = disp.shape[:2]
    mag = np.hypot(disp[..., 0], disp[..., 1])
    max_mag = float(mag.max()) if mag.size else 0.0
    left = Image.fromarray(_flow_colours(disp, max_mag))
    if background is not None:
        bg = np.asarray(background, dtype=np.float64)
        if bg.ndim == 3:
            bg = bg[..., :3].mean(-1)
        lo, hi = np.nanpercentile(bg, [1, 99]) if np.isfinite(bg).any() else (0.0, 1.0)
        bg = np.clip((bg - lo) / max(hi - lo, 1e-9), 0, 1) * 160 + 40
        bg = np.nan_to_num(bg, nan=0.0)
        if bg.shape != (h, w):
            bg = np.asarray(Image.fromarray(bg.astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float64)
        right = Image.fromarray(bg.astype(np.uint8)).convert("RGB")
    else:
        right = Image.new("RGB", (w, h), (90, 90, 90))
    draw = ImageDraw.Draw(right)
    step = max(8, min(h, w) // 16)
    gain = (0.9 * step / max_mag) if max_mag > 0 else 0.0
    for y in range(step // 2, h, step):
        for x in range(step // 2, w, step):
            dy, dx = disp[y, x]
            x2, y2 = x + gain * dx, y + gain * dy
            draw.line([(x, y), (x2, y2)], fill=(255, 220, 0), width=1)
            draw.ellipse([x - 1, y - 1, x + 1, y + 1], fill=(255, 80, 0))
    draw.text((3, 3), f"max {max_mag:.2f} px, mean {float(mag.mean()):.2f} px (arrows x{gain:.1f})",
              fill=(255, 255, 255))
    canvas = Image.new("RGB", (2 * w + 4, h), (0, 0, 0))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (w + 4, 0))
    if not p.parent.exists():
        raise InvalidInput(f"{p}: output folder {p.parent} does not exist")
    _atomic_write(p, lambda t: canvas.save(t, format="PNG"))
    return p

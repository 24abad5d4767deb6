"""The body of ``cmsr sr``: one target file + one guide file -> one output file.

Kept out of the CLI module so it is a plain function (testable without typer) and so every
user error is an :class:`InvalidInput` with a one-line message naming the file; the CLI prints
that line and exits with code 2. All checks that need no training run before training.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cmsr import image_io
from cmsr.api import METHODS, SRResult, run
from cmsr.inputs import check_guide_size, check_scale, prepare_target
from cmsr.errors import InputWarning, InvalidInput

#: the methods that read the guide (the others are told it is ignored, so a wrong file is noticed)
GUIDED_METHODS = ("cmsr", "guided")

PROGRESS_EVERY = 50
"""Echo a progress line every this many training iterations."""


@dataclass(frozen=True)
class SinglePairOutput:
    """What ``run_single_pair`` wrote and measured."""

    out_path: Path
    warp_path: Path | None
    result: SRResult
    guide_weight_path: Path | None = None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _quiet(_: str) -> None:
    return None


def run_single_pair(
    target_path: str | os.PathLike[str],
    guide_path: str | os.PathLike[str] | None,
    out_path: str | os.PathLike[str],
    scale: int,
    method: str = "cmsr",
    preset: str | None = None,
    no_warp: bool = False,
    seed: int = 0,
    device: str = "cpu",
    save_warp: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] | None = None,
    write_guide_weight: bool = False,
) -> SinglePairOutput:
    """Super-resolve one pair of files and write the result (target dtype for PNG, float32 TIFF);
    with ``write_guide_weight`` also ``<out stem>.guide_weight.tif`` (float32, ``cmsr.guide_weight``)."""
    say = echo or _quiet
    tpath = Path(target_path)
    gpath = Path(guide_path) if guide_path is not None else None
    opath = Path(out_path)
    wpath = Path(save_warp) if save_warp is not None else None
    gwpath = guide_weight_path(opath) if write_guide_weight else None
    try:
        s = check_scale(scale)
    except InvalidInput as exc:
        raise InvalidInput(f"{tpath}: {exc}") from None
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r} (expected one of {', '.join(METHODS)})")
    inputs = [tpath] + ([gpath] if gpath is not None else [])
    for out in [opath] + [p for p in (wpath, gwpath) if p is not None]:
        for inp in inputs:
            if _same_file(out, inp):
                raise InvalidInput(f"{out}: output path is an input file; refusing to overwrite it")
        if out.suffix.lower() not in image_io.PNG_SUFFIXES + image_io.TIFF_SUFFIXES:
            raise InvalidInput(f"{out}: unsupported output format {out.suffix!r} (use .png or .tif)")
        if not out.parent.exists():
            raise InvalidInput(f"{out}: output folder {out.parent} does not exist")
    if wpath is not None and wpath.suffix.lower() not in image_io.PNG_SUFFIXES:
        raise InvalidInput(f"{wpath}: the warp drawing is a PNG; use a .png name")

    target = image_io.read_target(tpath)
    guide = image_io.read_guide(gpath) if gpath is not None else None
    if guide is None and method in GUIDED_METHODS:
        raise InvalidInput(f"method {method!r} needs --guide")
    is_png = opath.suffix.lower() in image_io.PNG_SUFFIXES
    if is_png and target.dtype not in (np.uint8, np.uint16):
        raise InvalidInput(
            f"{opath}: the target {tpath.name} is {target.dtype}; a PNG cannot hold it in its units, use .tif"
        )
    try:  # the core's own target checks (size, all nodata), here so the message names the file
        prepare_target(target, None)
    except InvalidInput as exc:
        raise InvalidInput(f"{tpath}: {exc}") from None
    guide_notes: list[str] = []  # said before training; the core itself warns of a resampled guide
    if guide is not None:
        try:
            check_guide_size(guide.shape[:2], target.shape[:2], s)
        except InvalidInput as exc:
            raise InvalidInput(f"{gpath}: {exc}") from None
        if method not in GUIDED_METHODS:
            guide_notes.append(f"method {method!r} does not use a guide; {gpath} is ignored")

    from cmsr.config import DEFAULT_PRESET, CMSRConfig

    try:
        config = CMSRConfig.preset(preset or DEFAULT_PRESET)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if no_warp:
        config = config.without_warp()

    def progress(it: int, loss: float, lr: float) -> None:
        if it % PROGRESS_EVERY == 0:
            say(f"iter {it:5d}  loss {loss:.5f}  lr {lr:.2e}")

    learned = f" ({preset or DEFAULT_PRESET} preset{', no warp' if no_warp else ''})" if method in ("cmsr", "zssr") else ""
    say(f"{method} x{s}: {tpath.name} {target.shape[0]}x{target.shape[1]} -> "
        f"{s * target.shape[0]}x{s * target.shape[1]}{learned}")
    for line in guide_notes:  # warnings, not progress lines: said under --quiet/--json too
        warnings.warn(InputWarning(line), stacklevel=2)
    result = run(target, guide, s, config, method=method, seed=seed, device=device, progress=progress,
                 guide_weight=write_guide_weight)

    dtype = target.dtype if target.dtype in (np.uint8, np.uint16) else None
    image_io.write_image(opath, result.image, dtype)
    say(f"wrote {opath} ({result.stats.get('seconds', 0):.1f} s)")
    written_warp = None
    if wpath is not None:
        if result.displacement is None:
            say(f"no learned warp to draw for method {method!r}{' with --no-warp' if no_warp else ''}; "
                f"{wpath} not written")
        else:
            written_warp = image_io.write_displacement(wpath, result.displacement, guide)
            say(f"wrote {wpath} (mean displacement {float(np.mean(np.hypot(*np.moveaxis(result.displacement, -1, 0)))):.2f} px)")
    if gwpath is not None and result.guide_weight is not None:
        image_io.write_image(gwpath, result.guide_weight)
        w = result.guide_weight[np.isfinite(result.guide_weight)]
        say(f"wrote {gwpath} (guide weight: mean {float(w.mean()) if w.size else float('nan'):.2f}, "
            f"{100 * float((w > 0.5).mean()) if w.size else 0.0:.0f}% of pixels above 0.5)")
    return SinglePairOutput(out_path=opath, warp_path=written_warp, result=result, guide_weight_path=gwpath)


def guide_weight_path(out: Path) -> Path:
    """Where ``cmsr sr --write-guide-weight`` puts the weight map: ``<out stem>.guide_weight.tif``."""
    return out.with_name(f"{out.stem}.guide_weight.tif")


def summary(out: SinglePairOutput) -> dict[str, Any]:
    """JSON-able summary of a run (for ``--json`` style reporting)."""
    return {"out": str(out.out_path), "warp": str(out.warp_path) if out.warp_path else None,
            "guide_weight": str(out.guide_weight_path) if out.guide_weight_path else None, **out.result.stats}

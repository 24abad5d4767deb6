"""``cmsr sr``: one image pair, no georeferencing, no tiling: the core algorithm on two files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from . import options
from .app import app
from .exit_codes import exit_codes


@app.command(epilog="""[bold]Examples[/bold]

  cmsr sr --target thermal_lr.png --guide rgb.png --scale 4 --out thermal_sr.png

  cmsr sr --target flir.jpg --guide flir.jpg --scale 4 --out sr.tif --preset fast --save-warp warp.png

  cmsr sr --target nir_lr.tif --guide rgb.png --scale 2 --out nir_sr.tif --method guided
""")
def sr(
    target: Path = typer.Option(..., "--target", help="Low-resolution target image (PNG/TIFF, or a FLIR radiometric JPEG)."),
    guide: Optional[Path] = typer.Option(None, "--guide", help="High-resolution guide image (RGB; FLIR: its optical image)."),
    scale: str = options.scale_option(...),
    out: Path = typer.Option(..., "--out", "-o", help="Output image (.png keeps the target's dtype, .tif float32)."),
    method: str = options.method_option(), preset: Optional[str] = options.preset_option(),
    no_warp: bool = typer.Option(False, "--no-warp", help="Ablation: no learned guide deformation."),
    seed: int = options.SEED, device: str = options.DEVICE,
    save_warp: Optional[Path] = typer.Option(None, "--save-warp", help="Draw the learned displacement field to this PNG."),
    write_guide_weight: bool = typer.Option(False, "--write-guide-weight",
                                            help="Also write OUT-stem.guide_weight.tif (float32): where the guide was "
                                                 "trusted, 0 = the target alone, 1 = the guide shaped the pixel."),
    quiet: bool = options.QUIET, as_json: bool = options.JSON, verbose: bool = options.VERBOSE,
) -> None:
    """Super-resolve one image pair (no georeferencing, no tiling): the core algorithm on two files."""
    with exit_codes(verbose):
        zoom = options.parse_scale(scale, auto=False)
        from cmsr.single_pair import run_single_pair, summary

        echo = None if (quiet or as_json) else (lambda line: typer.echo(line, err=True))
        res = run_single_pair(target, guide, out, zoom, method=method, preset=preset, no_warp=no_warp, seed=seed,
                              device=device, save_warp=save_warp, echo=echo, write_guide_weight=write_guide_weight)
        if as_json:
            typer.echo(json.dumps(summary(res), indent=1, default=str))

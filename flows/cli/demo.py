"""``cmsr demo``: the whole flow on the real sample bundled with cmsr, scored against its truth."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError
from . import options
from .app import app
from .exit_codes import exit_codes
from .job import engine_logging, job_config, print_outputs, run_job

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample"

#: The demo's defaults: CMSR with the quick preset (a few minutes on one CPU core).
DEMO_METHOD, DEMO_PRESET = "cmsr", "fast"


@app.command(epilog="""[bold]Examples[/bold]

  cmsr demo

  cmsr demo --out /tmp/cmsr-demo --method bp

  cmsr demo --json
""")
def demo(
    out_dir: Path = typer.Option(Path("cmsr-demo"), "--out", "-o", help="Folder for the demo's output."),
    method: str = options.method_option(DEMO_METHOD), preset: Optional[str] = options.preset_option(DEMO_PRESET),
    workers: Optional[int] = options.WORKERS, quiet: bool = options.QUIET, as_json: bool = options.JSON,
    verbose: bool = options.VERBOSE,
) -> None:
    """Run the whole flow on the real sample bundled with cmsr (Sentinel-2 NIR 40 m -> 10 m, guided by RGB 10 m)."""
    engine_logging(verbose)
    with exit_codes(verbose):
        rgb, target, truth = SAMPLE_DIR / "rgb_10m.tif", SAMPLE_DIR / "nir_40m.tif", SAMPLE_DIR / "nir_10m_truth.tif"
        if not rgb.exists() or not target.exists():
            raise UsageError(f"sample folder {SAMPLE_DIR}: the bundled sample is missing (reinstall cmsr)")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"demo folder {out_dir}: cannot be created ({exc.strerror})") from None
        out = out_dir.resolve() / f"nir_10m_{method}.tif"
        config = job_config(method=method, preset=preset if method in ("cmsr", "zssr") else None)
        summary = run_job(rgb, target, out, config, workers=workers, scheduler=None, gpus=None, tiles_per_task=1,
                          tile_timeout=None, quiet=quiet, as_json=as_json)
        if truth.exists():
            summary["score"] = score_against_truth(Path(summary["cog"]), target, truth, summary["scale"])
        print_outputs(summary, quiet, as_json)
        if not quiet and not as_json and "score" in summary:
            score = summary["score"]
            typer.echo(f"vs the real 10 m NIR: RMSE {score['rmse']:.1f} ({method}) vs "
                       f"{score['rmse_bicubic']:.1f} (bicubic)")


def score_against_truth(out: Path, target: Path, truth: Path, scale: int) -> dict:
    """RMSE of the output and of plain bicubic against the real high-resolution band."""
    import numpy as np
    import rasterio

    from cmsr.resize import imresize

    with rasterio.open(out) as ds:
        sr = ds.read(1).astype(np.float64)
    with rasterio.open(truth) as ds:
        gt = ds.read(1).astype(np.float64)
    with rasterio.open(target) as ds:
        lr = ds.read(1).astype(np.float64)
    bic = imresize(lr, float(scale))[: gt.shape[0], : gt.shape[1]]
    ok = np.isfinite(sr) & np.isfinite(gt) & np.isfinite(bic)
    return {"rmse": float(np.sqrt(np.mean((sr[ok] - gt[ok]) ** 2))),
            "rmse_bicubic": float(np.sqrt(np.mean((bic[ok] - gt[ok]) ** 2)))}

"""The ``cmsr`` command line without the engine: help with examples, one-line errors, plan."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS = ["run", "plan", "demo", "sr", "serve", "submit"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    r = runner.invoke(app, [command, "--help"])
    assert r.exit_code == 0, r.output
    assert "Examples" in r.output and f"cmsr {command}" in r.output


def _one_error_line(r, fragment: str) -> None:
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert fragment in lines[0]
    assert "Traceback" not in r.output + r.stderr


def test_missing_input_is_one_line(tmp_path, sample):
    r = runner.invoke(app, ["plan", str(tmp_path / "nope.tif"), str(sample["target"])])
    _one_error_line(r, "nope.tif: does not exist")


def test_bad_scale_and_method_are_one_line(sample, tmp_path):
    r = runner.invoke(app, ["plan", str(sample["rgb"]), str(sample["target"]), "--scale", "x4"])
    _one_error_line(r, "--scale 'x4'")
    r = runner.invoke(app, ["plan", str(sample["rgb"]), str(sample["target"]), "--method", "magic"])
    _one_error_line(r, "method 'magic'")
    r = runner.invoke(app, ["plan", str(sample["rgb"]), str(sample["target"]), "--scale", "40"])
    _one_error_line(r, "scale")


def test_run_refuses_output_over_an_input(sample, tmp_path):
    rgb = tmp_path / "rgb.tif"
    shutil.copy(sample["rgb"], rgb)
    r = runner.invoke(app, ["run", str(rgb), str(sample["target"]), "-o", str(rgb), "--method", "bicubic"])
    _one_error_line(r, str(rgb))
    assert rgb.read_bytes() == Path(sample["rgb"]).read_bytes()


def test_sr_errors_are_one_line(tmp_path):
    r = runner.invoke(app, ["sr", "--target", str(tmp_path / "lr.png"), "--guide", str(tmp_path / "g.png"),
                            "--scale", "4", "--out", str(tmp_path / "o.png")])
    _one_error_line(r, "lr.png")
    r = runner.invoke(app, ["sr", "--target", str(tmp_path / "lr.png"), "--scale", "40", "--out",
                            str(tmp_path / "o.png")])
    _one_error_line(r, "scale")


def test_submit_needs_exactly_one_destination(sample, tmp_path):
    r = runner.invoke(app, ["submit", str(sample["rgb"]), str(sample["target"]), "-o", str(tmp_path / "o.tif")])
    _one_error_line(r, "exactly one of --scheduler")


def test_plan_reports_grids_tiles_and_estimate(sample):
    r = runner.invoke(app, ["plan", str(sample["rgb"]), str(sample["target"]), "--method", "bp",
                            "--tile-size", "64", "--halo", "8", "--workers", "2", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["hr_grid"]["shape"] == [200, 300] and info["lr_grid"]["shape"] == [50, 75]
    assert info["hr_grid"]["resolution"] == [10.0, 10.0] and info["lr_grid"]["resolution"] == [40.0, 40.0]
    assert info["scale"] == 4 and info["tiles"] == 20 and info["active_tiles"] == 20
    assert 0.99 <= info["valid_fraction"] <= 1.0
    assert info["estimated_seconds"] == pytest.approx(10 * info["seconds_per_tile"], rel=0.02)
    assert not (Path(sample["rgb"]).parent / "plan.tif").exists()


def test_cli_help_is_fast_and_imports_no_engine():
    code = ("import sys, flows.cli; "
            "bad = [m for m in ('prefect', 'distributed', 'torch', 'rasterio') if m in sys.modules]; "
            "print(bad)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_errors_are_classified_by_type_not_by_name(capsys) -> None:  # type: ignore[no-untyped-def]
    """Bad input (by type) is one line and exit 2; an internal ValueError, or a class that is merely
    called InvalidInput, is a bug: exit 1 with a pointer to --verbose, which shows the traceback."""
    import typer

    import cmsr
    import tiling.errors
    from flows.cli import _one_line_errors

    def code(exc: BaseException, verbose: bool = False) -> int:
        with pytest.raises(typer.Exit) as caught:
            with _one_line_errors(verbose):
                raise exc
        return caught.value.exit_code

    assert code(cmsr.InvalidInput("a.tif: no CRS")) == 2
    assert code(tiling.errors.InvalidInput("b.tif: empty")) == 2
    assert code(FileNotFoundError("c.tif: no such file")) == 2
    capsys.readouterr()
    assert code(ValueError("shape mismatch")) == 1
    assert "internal error: ValueError: shape mismatch (run with --verbose" in capsys.readouterr().err

    class InvalidInput(Exception):  # same name, other meaning
        pass

    assert code(InvalidInput("x")) == 1
    with pytest.raises(ValueError, match="shape mismatch"):
        with _one_line_errors(verbose=True):
            raise ValueError("shape mismatch")


def test_guide_and_target_bands_pick_bands_of_a_multiband_ortho(shared_data):  # type: ignore[no-untyped-def]
    """A 6-band Landsat 7 ortho is refused as RGB with a message naming --guide-bands; with the bands
    chosen (3,2,1 = red, green, blue) it plans; a malformed list is a one-line usage error."""
    folder = shared_data / "geo" / "landsat7_olinda"
    l7, dem = str(folder / "L7_ETMs.tif"), str(folder / "olinda_dem_utm25s.tif")
    r = runner.invoke(app, ["plan", l7, dem, "--method", "bp", "--json"])
    assert r.exit_code == 2 and "--guide-bands" in r.output
    r = runner.invoke(app, ["plan", l7, dem, "--method", "bp", "--guide-bands", "3,2,1", "--target-bands", "1",
                            "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["tiles"] >= 1
    r = runner.invoke(app, ["plan", l7, dem, "--guide-bands", "red,green"])
    assert r.exit_code == 2 and "comma-separated band numbers" in r.output

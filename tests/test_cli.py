"""The ``cmsr`` command line without the engine: help with examples, options declared once, one
honest ``--scale`` range, errors classified by type (exit codes), band selection, entry points."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from flows.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
COMMANDS = ["run", "plan", "demo", "sr", "serve", "submit"]


def _options(command: str) -> dict[str, object]:
    """The click options of ``command``, by their long name."""
    cmd = typer.main.get_command(app).commands[command]
    return {next(o for o in p.opts if o.startswith("--")): p for p in cmd.params if p.opts[0].startswith("-")}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_examples(command):
    r = runner.invoke(app, [command, "--help"])
    assert r.exit_code == 0, r.output
    assert "Examples" in r.output and f"cmsr {command}" in r.output


@pytest.mark.parametrize("flag", ["--method", "--workers", "--device", "--assume-crs", "--min-valid", "--scale",
                                  "--guide-bands", "--target-bands", "--verbose"])
def test_a_shared_option_means_the_same_in_every_command(flag):
    helps = {c: _options(c)[flag].help for c in COMMANDS if flag in _options(c)}
    assert len(helps) >= 2, helps
    if flag == "--scale":  # sr has no 'auto' (plain images carry no pixel size); the range is the same
        helps = {c: h.replace("'auto' (the ratio of pixel sizes) or ", "") for c, h in helps.items()}
    assert len(set(helps.values())) == 1, helps


def test_scale_range_is_the_cores_and_every_command_checks_it(sample, tmp_path):
    import cmsr.api
    from flows.cli.options import MAX_SCALE, MIN_SCALE

    assert (MIN_SCALE, MAX_SCALE) == (cmsr.api.MIN_SCALE, cmsr.api.MAX_SCALE)
    for command in ("run", "plan", "sr", "submit"):
        assert f"{MIN_SCALE}..{MAX_SCALE}." in _options(command)["--scale"].help, command
    out = str(tmp_path / "o.tif")
    for args in (["plan", str(sample["rgb"]), str(sample["target"])],
                 ["run", str(sample["rgb"]), str(sample["target"]), "-o", out],
                 ["submit", str(sample["rgb"]), str(sample["target"]), "-o", out, "--scheduler", "tcp://x:1"],
                 ["sr", "--target", str(sample["target"]), "--out", str(tmp_path / "o.png")]):
        for bad in ("x4", "9", "1"):
            r = runner.invoke(app, [*args, "--scale", bad])
            _one_error_line(r, f"--scale {bad!r}" if bad == "x4" else f"--scale {bad}: out of range")
    r = runner.invoke(app, ["sr", "--target", "t.png", "--out", "o.png", "--scale", "auto"])
    _one_error_line(r, "expected an integer 2..8")


def _one_error_line(r, fragment: str, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in r.output + r.stderr
    return lines[0]


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


@pytest.mark.parametrize("command", ["run", "submit"])
@pytest.mark.parametrize("name", ["sr.png", "sr.jpg", "sr"])
def test_a_non_tiff_output_name_is_refused(sample, tmp_path, command, name):
    """The output is a COG: a ``.png`` name would give GIS tools a GeoTIFF they open as a PNG."""
    extra = ["--scheduler", "tcp://127.0.0.1:1"] if command == "submit" else ["--method", "bicubic"]
    r = runner.invoke(app, [command, str(sample["rgb"]), str(sample["target"]), "-o", str(tmp_path / name), *extra])
    _one_error_line(r, f"{name}: the output is a Cloud-Optimized GeoTIFF")
    assert list(tmp_path.iterdir()) == []


def test_submit_needs_exactly_one_destination(sample, tmp_path):
    r = runner.invoke(app, ["submit", str(sample["rgb"]), str(sample["target"]), "-o", str(tmp_path / "o.tif")])
    _one_error_line(r, "exactly one of --scheduler")


def _plan_raising(monkeypatch, sample, exc: BaseException, *extra: str):
    """``cmsr plan`` on the sample while ``pipelines.prepare`` raises ``exc``."""
    import pipelines

    def prepare(*args, **kwargs):
        raise exc

    monkeypatch.setattr(pipelines, "prepare", prepare)
    return runner.invoke(app, ["plan", str(sample["rgb"]), str(sample["target"]), *extra])


def test_bad_input_is_recognised_by_type(monkeypatch, sample):
    import cmsr
    import tiling.errors
    from flows.errors import UsageError

    for exc, line in ((tiling.errors.InvalidInput("target file b.tif: all nodata"), "error: target file b.tif"),
                      (cmsr.InvalidInput("a.png: file not found"), "error: a.png: file not found"),
                      (UsageError("--gpus 3: only 0 visible"), "error: --gpus 3"),
                      (FileNotFoundError(2, "No such file or directory", "/w/tiles/3.npy"),
                       "error: /w/tiles/3.npy: No such file or directory")):
        assert _one_error_line(_plan_raising(monkeypatch, sample, exc), line).startswith(line)


def test_an_internal_value_error_is_a_bug_not_bad_input(monkeypatch, sample):
    r = _plan_raising(monkeypatch, sample, ValueError("operands could not be broadcast"))
    _one_error_line(r, "internal error: ValueError: operands could not be broadcast "
                       "(run with --verbose for the traceback)", code=1)
    r = _plan_raising(monkeypatch, sample, ValueError("operands could not be broadcast"), "--verbose")
    assert r.exit_code == 1
    assert "Traceback (most recent call last)" in r.stderr and "in prepare" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == "error: internal error: ValueError: operands could not be broadcast"


def test_a_class_merely_called_invalid_input_is_a_bug(monkeypatch, sample):
    class InvalidInput(Exception):  # same name as the core's and tiling's, other meaning
        pass

    r = _plan_raising(monkeypatch, sample, InvalidInput("from some other library"))
    _one_error_line(r, "internal error: InvalidInput: from some other library", code=1)


class _FinishedState:
    """Stands in for the flow's final Prefect state."""

    def __init__(self, outcome):
        self.outcome = outcome

    def result(self, raise_on_failure: bool = True):
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def _run_with_flow(monkeypatch, sample, tmp_path, outcome, *extra: str):
    """``cmsr run`` on the sample with the flow replaced by ``outcome``; returns (result, configs)."""
    import flows.survey

    configs = []

    def run_survey(rgb, target, out, config, options, on_cluster=None, notice=None):
        configs.append(config)
        return _FinishedState(outcome)

    monkeypatch.setattr(flows.survey, "run_survey", run_survey)
    r = runner.invoke(app, ["run", str(sample["rgb"]), str(sample["target"]), "-o", str(tmp_path / "o.tif"),
                            "--method", "bicubic", *extra])
    return r, configs


def test_failed_job_and_interrupt_exit_codes(monkeypatch, sample, tmp_path):
    from flows.errors import TileFailed

    r, _ = _run_with_flow(monkeypatch, sample, tmp_path, TileFailed("tile 7 of job j: RuntimeError: bad window"))
    _one_error_line(r, "error: tile 7 of job j", code=1)
    r, _ = _run_with_flow(monkeypatch, sample, tmp_path, KeyboardInterrupt())
    _one_error_line(r, "interrupted; finished tiles are kept", code=130)
    from flows.survey import TileFailed as from_survey

    assert from_survey is TileFailed  # the flow raises the type the CLI classifies


def test_run_passes_bands_to_the_job(monkeypatch, sample, tmp_path):
    summary = {"cog": "o.tif", "quicklook": None, "report": "o.report.json", "processed": 1, "reused": 0}
    r, configs = _run_with_flow(monkeypatch, sample, tmp_path, summary, "--guide-bands", "3,2,1",
                                "--target-bands", "1", "--json")
    assert r.exit_code == 0, r.output
    assert configs[0].guide_bands == (3, 2, 1) and configs[0].target_bands == (1,)
    assert json.loads(r.stdout)["processed"] == 1
    r, configs = _run_with_flow(monkeypatch, sample, tmp_path, summary, "--json")
    assert configs[0].guide_bands is None and configs[0].target_bands is None
    for bad, why in (("red,green", "expected comma-separated band numbers"), ("0,1", "band numbers start at 1")):
        r, _ = _run_with_flow(monkeypatch, sample, tmp_path, summary, "--guide-bands", bad)
        _one_error_line(r, f"--guide-bands '{bad}': {why}")


def test_guide_and_target_bands_pick_bands_of_a_multiband_ortho(shared_data):
    """A 6-band Landsat 7 ortho (bands 1,2,3,4=NIR,5,7) is refused as RGB with a message naming
    --guide-bands; with red, green, blue chosen (3,2,1) it plans against the real 90 m DEM; a band
    the file does not have is one line naming the file."""
    folder = shared_data / "geo" / "landsat7_olinda"
    l7, dem = str(folder / "L7_ETMs.tif"), str(folder / "olinda_dem_utm25s.tif")
    r = runner.invoke(app, ["plan", l7, dem, "--method", "bp", "--json"])
    _one_error_line(r, "(choose bands with --guide-bands)")
    r = runner.invoke(app, ["plan", l7, dem, "--method", "bp", "--guide-bands", "3,2,1", "--target-bands", "1",
                            "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["guide_bands"] == [3, 2, 1] and info["target_bands"] == [1] and info["tiles"] >= 1
    assert info["hr_grid"]["shape"] == [352, 349]
    r = runner.invoke(app, ["plan", l7, dem, "--guide-bands", "3,2,7"])
    _one_error_line(r, "L7_ETMs.tif: has 6 band(s); --guide-bands [3, 2, 7] is out of range")


def test_plan_reports_grids_tiles_and_estimate(sample):
    r = runner.invoke(app, ["plan", str(sample["rgb"]), str(sample["target"]), "--method", "bp",
                            "--tile-size", "64", "--halo", "8", "--workers", "2", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["hr_grid"]["shape"] == [200, 300] and info["lr_grid"]["shape"] == [50, 75]
    assert info["hr_grid"]["resolution"] == [10.0, 10.0] and info["lr_grid"]["resolution"] == [40.0, 40.0]
    assert info["scale"] == 4 and info["tiles"] == 20 and info["active_tiles"] == 20
    assert info["guide_bands"] == [1, 2, 3] and info["target_bands"] == [1]
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


@pytest.mark.parametrize("launcher", [["-c", "from flows.cli import main; main()"], ["-m", "flows.cli"]])
def test_entry_points_run_the_commands(launcher, sample):
    """What the console script (``flows.cli:main``) and ``python -m flows.cli`` run: the real commands."""
    r = subprocess.run([sys.executable, *launcher, "plan", str(sample["rgb"]), str(sample["target"]), "--method",
                        "bicubic", "--tile-size", "100", "--halo", "8", "--workers", "1", "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tiles"] == 6
    r = subprocess.run([sys.executable, *launcher, "plan", "nope.tif", str(sample["target"])], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip() == "error: RGB file nope.tif: does not exist", r.stderr


def test_write_guide_weight_reaches_the_job(monkeypatch, sample, tmp_path):
    """``--write-guide-weight`` on ``run`` and ``submit`` sets ``JobConfig.write_guide_weight`` (off by default)."""
    summary = {"cog": "o.tif", "quicklook": None, "report": "o.report.json", "processed": 1, "reused": 0}
    r, configs = _run_with_flow(monkeypatch, sample, tmp_path, summary, "--write-guide-weight", "--json")
    assert r.exit_code == 0, r.output
    assert configs[0].write_guide_weight is True
    _, configs = _run_with_flow(monkeypatch, sample, tmp_path, summary, "--json")
    assert configs[0].write_guide_weight is False
    from flows import submit as submission

    sent = []
    monkeypatch.setattr(submission, "to_scheduler", lambda address, *args: sent.append(args) or "run-id")
    r = runner.invoke(app, ["submit", str(sample["rgb"]), str(sample["target"]), "-o", str(tmp_path / "o.tif"),
                            "--scheduler", "tcp://127.0.0.1:1", "--write-guide-weight"])
    assert r.exit_code == 0, r.output
    assert sent[0][3]["write_guide_weight"] is True
    assert _options("run")["--write-guide-weight"].help == _options("submit")["--write-guide-weight"].help


def test_survey_model_options_reach_the_job(monkeypatch, sample, tmp_path):
    """``--survey-model/--no-survey-model`` (default auto = None), the hidden old ``--warm-start``
    as ``--survey-model``, ``--model PATH`` (absolute); forcing it on another method is one line.
    The summary names the model file written beside the output."""
    summary = {"cog": "o.tif", "quicklook": None, "report": "o.report.json", "processed": 1, "reused": 0,
               "model": "o.model.pt"}
    cmsr = ("--method", "cmsr")
    for flags, want in (((), None), (("--survey-model",), True), (("--no-survey-model",), False),
                        (("--warm-start",), True)):
        r, configs = _run_with_flow(monkeypatch, sample, tmp_path, summary, *cmsr, *flags)
        assert r.exit_code == 0, r.output
        assert configs[0].survey_model is want and configs[0].model is None
    assert "survey model: o.model.pt" in r.stdout
    r, configs = _run_with_flow(monkeypatch, sample, tmp_path, summary, *cmsr, "--model", "week1.model.pt")
    assert r.exit_code == 0, r.output
    assert configs[0].model == str(Path("week1.model.pt").resolve()) and configs[0].survey_model is None
    r, _ = _run_with_flow(monkeypatch, sample, tmp_path, summary, "--survey-model")  # bicubic
    _one_error_line(r, "survey_model applies to method 'cmsr' only")
    r, _ = _run_with_flow(monkeypatch, sample, tmp_path, summary, *cmsr, "--warm-start", "--no-survey-model")
    _one_error_line(r, "--warm-start (the old name of --survey-model) contradicts --no-survey-model")
    helped = runner.invoke(app, ["run", "--help"])
    assert "--warm-start" not in helped.output and "--no-survey-model" in helped.output
    assert _options("run")["--survey-model"].help == _options("plan")["--survey-model"].help
    assert "auto: on from 4 tiles" in _options("run")["--survey-model"].help


def _model_file(path: Path, *, scale: int = 4, bands: int = 1, guide_bands: int = 3) -> str:
    """A survey model file for the ``fast`` preset's networks, made for ``scale``, ``bands``
    target bands and ``guide_bands`` guide bands."""
    import pipelines
    from cmsr import model as M
    from cmsr.survey_model import SurveyModel, save_models
    from pipelines.tilefn import cmsr_config

    cfg = cmsr_config(pipelines.JobConfig(preset="fast"))
    w = M.init_params(guide_bands, sr_depth=cfg.sr_depth, sr_width=cfg.sr_width, guide_depth=cfg.guide.depth,
                      guide_width=cfg.guide.width, init_variance=cfg.init_variance, seed=0)
    save_models(str(path), [SurveyModel(weights=w, base="bp", scale=scale, guide_bands=guide_bands)] * bands)
    return str(path)


def test_run_refuses_a_survey_model_that_does_not_fit(sample, tmp_path):
    """``--model`` is checked before any tile work, through the real ``cmsr run``: a model for
    another scale, target band count or guide band count, or a file that is no model, is one line
    naming the file and the problem, exit 2, and nothing is left beside the output."""
    models = tmp_path / "models"
    models.mkdir()
    cases = [(_model_file(models / "x2.pt", scale=2), "survey model made for scale x2, this job is x4"),
             (_model_file(models / "two.pt", bands=2), "survey model made for 2 target band(s), this job has 1"),
             (_model_file(models / "grey.pt", guide_bands=1), "survey model made for 1 guide band(s), this job has 3"),
             (str(sample["target"]), "not a cmsr survey model"),
             (str(models / "missing.pt"), "survey model file not found")]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for path, problem in cases:
        r = runner.invoke(app, ["run", str(sample["rgb"]), str(sample["target"]), "-o", str(out_dir / "sr.tif"),
                                "--preset", "fast", "--tile-size", "64", "--model", path])
        _one_error_line(r, f"error: {path}: {problem}")
        assert list(out_dir.iterdir()) == [], r.output

"""Scheduled survey processing: discover survey folders, process those without an up-to-date
output, as a Prefect deployment (``flow.serve`` with a cron or interval schedule).

**Survey folder rule.** Every direct sub-folder of the watched folder is a survey when it holds
either a ``survey.toml``::

    rgb = "odm_orthophoto.tif"      # paths relative to the folder
    target = "thermal.tif"
    out = "cmsr/thermal_sr.tif"     # optional
    [config]                        # optional pipelines.JobConfig fields
    method = "bp"

or exactly one RGB GeoTIFF and exactly one target GeoTIFF told apart by name
(case-insensitive): RGB = a name containing ``rgb``, ``ortho``, ``visible`` or ``optical``;
target = a name containing ``thermal``, ``tir``, ``lwir``, ``nir`` or ``temp`` (a name
matching both counts as the target). The output goes to ``<survey>/cmsr/<target stem>_sr.tif``.

**Up to date** = the output and its report exist and are newer than both inputs (and the
``survey.toml``). So a scan is idempotent: a second scan does nothing; replacing an input
re-processes that survey (resuming its finished tiles only if the plan is unchanged).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .survey import RunOptions, run_survey, superresolve_survey  # first: it configures Prefect's environment

from prefect import flow, get_run_logger  # noqa: E402

RGB_WORDS = ("rgb", "ortho", "visible", "optical")
TARGET_WORDS = ("thermal", "tir", "lwir", "nir", "temp")
OUTPUT_DIR = "cmsr"
SURVEY_FILE = "survey.toml"


@dataclass(frozen=True)
class Survey:
    folder: str
    rgb: str | None
    target: str | None
    out: str | None
    config: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why this folder cannot be processed


def _has_word(name: str, words: tuple[str, ...]) -> bool:
    tokens = re.split(r"[^a-z0-9]+", name.lower())
    stem = name.lower()
    return any(w in tokens or (len(w) > 3 and w in stem) for w in words)


def find_survey(folder: Path) -> Survey | None:
    """The survey in ``folder`` (None when the folder holds no GeoTIFF at all)."""
    toml = folder / SURVEY_FILE
    if toml.exists():
        import tomllib

        try:
            d = tomllib.loads(toml.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            return Survey(str(folder), None, None, None, problem=f"{toml}: {exc}")
        if "rgb" not in d or "target" not in d:
            return Survey(str(folder), None, None, None, problem=f"{toml}: needs rgb = ... and target = ...")
        target = folder / d["target"]
        out = folder / d.get("out", f"{OUTPUT_DIR}/{target.stem}_sr.tif")
        return Survey(str(folder), str(folder / d["rgb"]), str(target), str(out), dict(d.get("config", {})))
    tifs = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.is_file())
    if not tifs:
        return None
    targets = [p for p in tifs if _has_word(p.stem, TARGET_WORDS)]
    rgbs = [p for p in tifs if _has_word(p.stem, RGB_WORDS) and p not in targets]
    if len(rgbs) != 1 or len(targets) != 1:
        return Survey(str(folder), None, None, None,
                      problem=f"{folder}: found {len(rgbs)} RGB and {len(targets)} target GeoTIFF(s) by name; "
                              f"expected one each (or write a {SURVEY_FILE})")
    out = folder / OUTPUT_DIR / f"{targets[0].stem}_sr.tif"
    return Survey(str(folder), str(rgbs[0]), str(targets[0]), str(out))


def discover(root: str) -> list[Survey]:
    """Surveys in the direct sub-folders of ``root`` (sorted by name)."""
    base = Path(root)
    found = []
    for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        s = find_survey(sub)
        if s is not None:
            found.append(s)
    return found


def _report_path(out: str) -> str:
    root, ext = os.path.splitext(out)
    return (root if ext.lower() in (".tif", ".tiff") else out) + ".report.json"


def up_to_date(s: Survey) -> bool:
    """Output and report exist and are newer than the inputs (and the survey.toml)."""
    if s.out is None or not os.path.exists(s.out) or not os.path.exists(_report_path(s.out)):
        return False
    newest_input = max(os.path.getmtime(p) for p in (s.rgb, s.target) if p and os.path.exists(p))
    toml = os.path.join(s.folder, SURVEY_FILE)
    if os.path.exists(toml):
        newest_input = max(newest_input, os.path.getmtime(toml))
    return min(os.path.getmtime(s.out), os.path.getmtime(_report_path(s.out))) >= newest_input


def process_pending(root: str, defaults: dict[str, Any], engine: dict[str, Any]) -> list[dict[str, Any]]:
    """Run every survey under ``root`` that is not up to date; one dict per survey folder."""
    import pipelines

    from .cluster import ClusterSpec

    done = []
    for s in discover(root):
        row: dict[str, Any] = {"survey": s.folder, "out": s.out}
        if s.problem:
            done.append({**row, "status": "skipped", "error": s.problem})
            continue
        if up_to_date(s):
            done.append({**row, "status": "up-to-date"})
            continue
        os.makedirs(os.path.dirname(s.out), exist_ok=True)
        try:
            config = pipelines.JobConfig.from_dict({**{k: v for k, v in defaults.items() if v is not None}, **s.config})
            options = RunOptions(cluster=ClusterSpec(scheduler=engine.get("scheduler"), workers=engine.get("workers"),
                                                     gpus=engine.get("gpus")))
            state = run_survey(s.rgb, s.target, s.out, config, options)
            state.result(raise_on_failure=True)
            done.append({**row, "status": "processed"})
        except Exception as exc:  # noqa: BLE001 - one bad survey must not stop the others
            done.append({**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
    return done


@flow(name="scan-surveys", persist_result=False, validate_parameters=False)
def scan_surveys(root: str, defaults: dict | None = None, engine: dict | None = None) -> list[dict]:
    """Process every survey folder under ``root`` without an up-to-date output (``flows.watch``)."""
    rows = process_pending(root, dict(defaults or {}), dict(engine or {}))
    logger = get_run_logger()
    for r in rows:
        (logger.warning if r["status"] == "failed" else logger.info)(f"{r['status']}: {r['survey']}")
    return rows


def serve(root: str, defaults: dict[str, Any], engine: dict[str, Any], *, cron: str | None, interval: float,
          name: str) -> None:
    """Serve two deployments until interrupted: ``scan-surveys/<name>`` on the schedule, and
    ``superresolve-survey/<name>`` (on demand: ``cmsr submit --deployment superresolve-survey/<name>``)."""
    from prefect import serve as prefect_serve
    from prefect.types.entrypoint import EntrypointType

    from .engine import prefect_api

    with prefect_api(services=True) as api:
        api.wait()
        params = {"root": os.path.abspath(root), "defaults": defaults, "engine": engine}
        sched = {"cron": cron} if cron else {"interval": interval}
        # module-path entry points ("flows.watch.scan_surveys"): the runner's subprocess then
        # imports the package module, so the tasks it sends to Dask workers unpickle there
        by_module = EntrypointType.MODULE_PATH
        prefect_serve(
            scan_surveys.to_deployment(name=name, parameters=params, entrypoint_type=by_module, **sched),
            superresolve_survey.to_deployment(name=name, entrypoint_type=by_module),
            print_starting_message=False,
        )


__all__ = ["Survey", "find_survey", "discover", "up_to_date", "process_pending", "serve", "RGB_WORDS",
           "TARGET_WORDS"]

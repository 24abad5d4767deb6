"""Device and process policy for the per-tile trainers: allocator, mixed precision, layouts.

Why a module of its own: the speed of CMSR's tiny 48x48 training steps depends more on the
runtime around the maths than on the maths (issue 5):

* **glibc's allocator.** PyTorch's CPU tensors of a training step are a few hundred KB to a
  few MB; glibc serves those with ``mmap`` and returns them to the OS on free (and trims the
  heap top), so every step page-faults its buffers back in. Keeping them in the heap
  (``M_MMAP_MAX=0``, a large trim threshold and top pad) measured faster here with identical
  outputs (benchmarks/RESULTS.md, "Throughput"). The parameters can be set in-process with
  ``mallopt`` (``configure_allocator``), or through the environment before a process starts
  (``allocator_env``) so child processes (Dask workers) inherit them.
* **Mixed precision** only on CUDA (bf16 where supported, else fp16); fp32 on CPU, where
  autocast would only add casts.
* **Channels-last** and **pinned host memory** only on CUDA, where they pay.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass
from typing import Iterator, Literal

import numpy as np
import torch

# glibc mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

#: Keep up to 1 GiB of freed memory at the heap top, grow the heap 256 MiB at a time, never
#: serve an allocation with mmap. Values fit a C int (mallopt takes int).
ALLOCATOR_SETTINGS = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(1 << 28),
}
_GUARD = "CMSR_ALLOCATOR_REEXEC"

AmpChoice = Literal["auto", "bf16", "fp16", "off"]


def allocator_env() -> dict[str, str]:
    """Environment variables that make glibc keep PyTorch's buffers (set before a process starts)."""
    return dict(ALLOCATOR_SETTINGS)


def _startup_environ() -> dict[str, str]:
    """The environment this process was started with (not ``os.environ``, which may be edited)."""
    try:
        raw = open("/proc/self/environ", "rb").read()
    except OSError:
        return dict(os.environ)
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def allocator_active() -> bool:
    """True when this process started with the allocator settings in its environment."""
    env = _startup_environ()
    return all(env.get(k) == v for k, v in ALLOCATOR_SETTINGS.items())


def configure_allocator() -> bool:
    """Apply the allocator settings to this process with glibc ``mallopt``; False if not glibc.

    Equivalent to starting with ``allocator_env()`` for allocations made from now on (the
    parameters are process-global, all arenas). Also exports the variables so that child
    processes started later inherit them.
    """
    os.environ.update(ALLOCATOR_SETTINGS)
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, int(ALLOCATOR_SETTINGS["MALLOC_MMAP_MAX_"]))
    ok &= mallopt(_M_TRIM_THRESHOLD, int(ALLOCATOR_SETTINGS["MALLOC_TRIM_THRESHOLD_"]))
    ok &= mallopt(_M_TOP_PAD, int(ALLOCATOR_SETTINGS["MALLOC_TOP_PAD_"]))
    return bool(ok)


def ensure_allocator_env(*, reexec: bool = True) -> None:
    """Make this process (and its future children) run with the allocator settings.

    With ``reexec`` (for the ``cmsr`` command), re-executes the current command line once with
    the variables set, unless the process already started with them or a previous re-exec
    happened (guard variable); without it, or where re-exec is impossible (no
    ``sys.orig_argv``, interactive), applies them in-process with ``mallopt``. Never raises.
    """
    if allocator_active():
        return
    argv = list(getattr(sys, "orig_argv", []) or [])
    interactive = not argv or len(argv) == 1 or bool(getattr(sys, "ps1", None))
    if not reexec or os.environ.get(_GUARD) == "1" or interactive or not sys.platform.startswith("linux"):
        configure_allocator()
        return
    env = dict(os.environ)
    env.update(ALLOCATOR_SETTINGS)
    env[_GUARD] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], env)
    except OSError:
        configure_allocator()


@dataclass(frozen=True)
class DevicePolicy:
    """How the trainers run on one device.

    amp_dtype: autocast dtype for the networks (None = fp32). CUDA only.
    channels_last: NHWC activations (CUDA: tensor-core friendly convolutions).
    pin_memory: stage host->device copies in pinned memory, copy non-blocking.
    """

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    pin_memory: bool = False

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast region for network evaluation; a no-op for fp32."""
        if self.amp_dtype is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype):
            yield

    def to_device(self, array: np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Host array -> device tensor; pinned + non-blocking on CUDA."""
        t = torch.as_tensor(np.ascontiguousarray(array) if isinstance(array, np.ndarray) else array)
        t = t.to(dtype)
        if self.pin_memory and t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=self.pin_memory)


def device_policy(device: str | torch.device = "cpu", amp: AmpChoice = "auto") -> DevicePolicy:
    """The policy for ``device``: fp32 everywhere unless CUDA (then bf16 if supported, else fp16).

    ``amp='off'`` forces fp32 (the bit-comparable path); 'bf16'/'fp16' force a dtype on CUDA
    and are ignored on CPU, where autocast only adds casts to the small convolutions.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return DevicePolicy(device=dev)
    if amp == "off":
        dtype = None
    elif amp == "fp16":
        dtype = torch.float16
    elif amp == "bf16":
        dtype = torch.bfloat16
    elif amp == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        raise ValueError(f"unknown amp choice {amp!r} (expected auto, bf16, fp16 or off)")
    return DevicePolicy(device=dev, amp_dtype=dtype, channels_last=True, pin_memory=True)


def free_memory_bytes(device: str | torch.device) -> int:
    """Memory a batch of tiles may use now: free CUDA memory, or MemAvailable on the host."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))

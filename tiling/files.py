"""Writing a file so that readers see either the old one or the complete new one, never a part.

Workers on shared storage read tile results, ``job.json`` and the outputs while others write them,
and a killed run must not leave a truncated file under the real name (resume would trust it).
Standard library only, so every layer above (tiling, pipelines) can use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temp path beside ``path``; on success it replaces ``path``, on error it is removed.

    The temp file is in the same folder (``os.replace`` is atomic only within one file system) and
    keeps ``path``'s extension (GDAL, ``np.save`` and image writers look at it). It exists, empty,
    when the block starts, so the name is this process's alone.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    ext = os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)

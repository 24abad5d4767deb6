"""Loaded by every Python process of the offline test (via PYTHONPATH): records each attempt
to resolve or connect to a non-loopback address in the file ``$CMSR_TEST_NETLOG``."""

import os
import socket

_LOG = os.environ.get("CMSR_TEST_NETLOG")
_LOCAL = ("127.", "::1", "localhost", "0.0.0.0", "")


def _record(what: str) -> None:
    try:
        with open(_LOG, "a") as f:
            f.write(f"{os.getpid()} {what}\n")
    except OSError:
        pass


if _LOG:
    _connect = socket.socket.connect
    _getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith(_LOCAL):
            _record(f"connect {address!r}")
        return _connect(self, address)

    def getaddrinfo(host, *args, **kwargs):
        h = host.decode() if isinstance(host, bytes) else str(host)
        if not h.startswith(_LOCAL) and h not in ("None",):
            _record(f"resolve {h}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.getaddrinfo = getaddrinfo

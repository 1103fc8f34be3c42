"""Serial-port facts the drivers need before opening a port."""

from __future__ import annotations

import os
import stat

__all__ = ["is_pty", "line_parity"]

# Linux: Unix98 pseudo-terminal slaves (/dev/pts/N) have majors 136..143
_PTY_MAJORS = range(136, 144)


def is_pty(port: str) -> bool:
    """True when ``port`` (a path, symlinks followed) is a pseudo-terminal."""
    try:
        st = os.stat(port)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_MAJORS


def line_parity(port: str, parity: str) -> str:
    """The parity to open ``port`` with: ``parity``, except ``"N"`` on a pseudo-terminal.

    A pty (the simulator's null modem, a ser2net/socat virtual port) has no parity bit
    on any wire; some kernels refuse PARENB on it (EINVAL), which would keep an RTU site
    with the Modbus default 8E1 from ever opening its simulated line.
    """
    if parity != "N" and is_pty(port):
        return "N"
    return parity

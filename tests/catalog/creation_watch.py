"""Run the `landsurf` CLI and record the mode every file it creates has at the instant of creation.

`python tests/catalog/creation_watch.py db start` with LANDSURF_TEST_CREATIONS=<log>. Wrapped
`os.open` and `io.open` fstat() the new descriptor as soon as the call returns, before the code
that created the file can chmod it, and stat its folder: a file created with default permissions
and tightened afterwards shows its first, loose mode. One JSON line per created file.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import sys

_log = os.open(os.environ["LANDSURF_TEST_CREATIONS"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
_os_open = os.open
_io_open = io.open


def _record(path, fd: int) -> None:
    path = os.path.abspath(os.fsdecode(path))
    st = os.fstat(fd)
    folder = os.stat(os.path.dirname(path))
    line = {"path": path, "mode": st.st_mode & 0o7777, "uid": st.st_uid,
            "folder_mode": folder.st_mode & 0o7777, "folder_uid": folder.st_uid, "umask": _umask}
    os.write(_log, (json.dumps(line) + "\n").encode())


def _watched_os_open(path, flags, mode=0o777, *, dir_fd=None):
    new = bool(flags & os.O_CREAT) and dir_fd is None and not os.path.lexists(path)
    fd = _os_open(path, flags, mode, dir_fd=dir_fd)
    if new:
        _record(path, fd)
    return fd


def _watched_io_open(file, mode="r", *args, **kwargs):
    new = (isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wxa")
           and not os.path.lexists(file))
    fh = _io_open(file, mode, *args, **kwargs)
    if new:
        _record(file, fh.fileno())
    return fh


_umask = os.umask(0)
os.umask(_umask)
os.open = _watched_os_open
io.open = builtins.open = _watched_io_open

if __name__ == "__main__":
    from processing.cli import main

    sys.argv = ["landsurf", *sys.argv[1:]]
    main()

"""Files and folders only their owner may read, private from their first byte.

Creating a file with default permissions and chmod-ing it afterwards leaves a window in which
anyone may open it; these helpers never have that window, whatever the umask.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def write_private(path: Path, text: str, owner: str | None = None) -> None:
    """Write `path` atomically, mode 0600 from its first byte (whatever the umask), owned by `owner`.

    The file is created beside its final name with O_EXCL (never through a planted file or link),
    given to `owner` before anything is written, then renamed over the final name.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask can only have removed bits; make it exact
        if owner is not None:
            pw = pwd.getpwnam(owner)
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
        data = text.encode()
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


def private_dir(path: Path, owner: str | None = None, tighten: bool = True) -> None:
    """Create `path` as a 0700 directory owned by `owner` (missing parents 0755), or tighten it to 0700."""
    for parent in reversed(path.parents):
        if not parent.exists():
            try:
                os.mkdir(parent, 0o755)
            except FileExistsError:
                pass
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not tighten:
            return
    if owner is not None:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)
    os.chmod(path, 0o700)

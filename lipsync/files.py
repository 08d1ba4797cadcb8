"""Publishing a finished file under its final name, with the mode a new file normally gets.

Writers build their output in a temporary file next to the target and rename it into place
only when it is complete, so a failure never leaves a partial file. ``tempfile.mkstemp``
creates that file as ``-rw-------`` whatever the umask, and a rename keeps the mode: without
``publish`` a user's result.mp4 would be unreadable to their group and to a web server.
"""

from __future__ import annotations

import os


def current_umask() -> int:
    """The process umask, read without changing it (os.umask sets it, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc (macOS): the classic read-and-restore
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 minus the umask."""
    return 0o666 & ~current_umask()


def publish(tmp_path: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give ``tmp_path`` the normal new-file mode and rename it to ``path`` (atomic)."""
    os.chmod(tmp_path, default_file_mode())
    os.replace(tmp_path, path)

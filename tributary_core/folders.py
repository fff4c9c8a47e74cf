"""Guards for commands that write or replace a folder the user names (``--out``, ``--force``).

A command may replace a folder only when it is one of its own kind (a run, a store, a fetch):
never a folder of other files, never the working directory, a folder above it, or the home
folder, whatever ``--force`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tributary_core.errors import TributaryError

__all__ = ["check_output_folder", "is_protected"]


def is_protected(path: Path) -> bool:
    """The working directory, a folder above it, or the home folder."""
    target, here = path.resolve(), Path.cwd().resolve()
    return target == here or target in here.parents or target == Path.home().resolve()


def check_output_folder(out: Path, *, force: bool, is_ours: Callable[[Path], bool], kind: str,
                        option: str = "--out") -> bool:
    """Check that ``out`` may receive a new ``kind`` (e.g. ``"training run"``); returns whether
    it already holds one. Raises a one-line :class:`TributaryError` when ``out`` (or a folder
    above it) is a file, when ``force`` would act on a protected folder, or when ``out`` holds
    files that are not a ``kind``. An empty or missing folder is always fine."""
    if out.exists() and not out.is_dir():
        raise TributaryError(f"{option} {out}: is a file, not a folder")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise TributaryError(f"{option} {out}: {parent} is a file, not a folder")
    if force and is_protected(out):
        raise TributaryError(f"{option} {out}: --force would replace the working directory or a "
                             f"folder above it; name a folder of its own")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not is_ours(out):
        raise TributaryError(f"{option} {out}: the folder holds other files and no {kind}; name "
                             f"a new or empty folder (--force replaces only a {kind})")
    return True

"""Files and folders that appear whole or not at all (fetched datasets, preprocessed stores,
written metadata)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["staged_folder", "atomic_write_text"]


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it is renamed to ``out``.

    An existing ``out`` is moved aside first and removed only after the rename, so no moment
    leaves neither the old folder nor the new one. On any exception the temporary folder is
    removed and ``out`` is untouched. Callers decide beforehand whether replacing is allowed.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sweep_stale(out: Path) -> None:
    """Remove temporary folders for ``out`` left by processes that were killed (their PID,
    part of the name, no longer runs)."""
    for path in out.parent.glob(f".{out.name}.*.tmp"):
        parts = path.name[len(out.name) + 2 :].split(".")
        if not parts[0].isdigit() or int(parts[0]) == os.getpid():
            continue
        try:
            os.kill(int(parts[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # alive but not ours (EPERM): leave it
            continue


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and a rename: a reader
    sees the old file or the whole new one, and a failure leaves no partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

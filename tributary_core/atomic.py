"""Files and folders that appear whole or not at all (fetched datasets, preprocessed stores,
written metadata)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from tributary_core.errors import TributaryError

__all__ = ["staged_folder", "scratch_folder", "atomic_write", "atomic_write_text",
           "atomic_write_bytes", "rename_noreplace"]


def _host_tag() -> str:
    """A short tag of this machine, part of every temporary folder's name, so a sweep never
    removes the folder of a live process on another machine sharing the file system."""
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


@contextlib.contextmanager
def staged_folder(out: Path, *, replace: bool = True,
                  may_replace: Callable[[Path], str | None] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success it is renamed to ``out``.

    ``replace``: whether an ``out`` that exists when the folder is published may be replaced.
    Without it, publishing is an atomic rename that refuses an existing ``out`` (one that
    appeared while the folder was being written, say by a second run), with a
    :class:`TributaryError`. ``may_replace(out)``, checked at publish time, returns None if
    that existing ``out`` may be replaced, else the reason it may not (an error).

    An existing ``out`` is moved aside first and removed only after the rename, so no moment
    leaves neither the old folder nor the new one. On any exception (KeyboardInterrupt too)
    the temporary folder is removed and ``out`` is as it was. Failing to create or publish the
    folder (read-only parent, ``out`` under a file, full disk) is a :class:`TributaryError`
    naming the path; errors raised inside the ``with`` block pass through unchanged.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.{_host_tag()}.",
                                    suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise _write_error(exc, out, "cannot create the output folder") from None
    old: Path | None = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        yield tmp
        if os.path.lexists(out):
            if not replace:
                raise TributaryError(f"{out} already exists (it appeared while this one was "
                                     "being written); use --force to replace it")
            reason = may_replace(out) if may_replace is not None else None
            if reason is not None:
                raise TributaryError(f"{out}: {reason}")
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            try:
                out.rename(old)
            except OSError as exc:
                old = None
                raise _write_error(exc, out, "cannot move the existing folder aside") from None
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise TributaryError(f"{out} already exists (it appeared while this one was being "
                                 "written); nothing was replaced") from None
        except OSError as exc:
            raise _write_error(exc, out, "cannot publish") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.lexists(out):
            with contextlib.suppress(OSError):  # put the old folder back where it was
                old.rename(out)
                old = None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_error(exc: OSError, default: Path, what: str) -> TributaryError:
    where = exc.filename if exc.filename else default
    return TributaryError(f"{where}: {what}: {exc.strerror or exc}")


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def rename_noreplace(src: str | Path, dst: str | Path) -> None:
    """Rename ``src`` to ``dst``, raising FileExistsError if ``dst`` exists, atomically where
    the system can (Linux ``renameat2(RENAME_NOREPLACE)``); elsewhere a check then a rename, so
    only an empty folder created in between could still be replaced."""
    fn = None
    with contextlib.suppress(OSError, AttributeError):
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        raise


@contextlib.contextmanager
def scratch_folder(name: str, parent: str | Path | None = None) -> Iterator[Path]:
    """Yield a new private folder ``.NAME.PID.HOST.XXXXXXXX.tmp`` in ``parent`` (default: the
    system's temporary directory), removed with its contents when the block ends, however it
    ends. A process killed outright cannot remove its own: such folders left by processes of
    this machine that no longer run are removed first, as :func:`staged_folder` does."""
    parent = Path(parent if parent is not None else tempfile.gettempdir())
    _sweep_stale(parent / name)
    path = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.{_host_tag()}.", suffix=".tmp",
                                 dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _sweep_stale(out: Path) -> None:
    """Remove temporary folders for ``out`` left by processes of this machine that were killed
    (their PID, part of the name, no longer runs). Only folders named exactly as
    :func:`staged_folder` names them are candidates."""
    host = _host_tag()
    for path in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        parts = path.name[len(out.name) + 2 :].split(".")
        if (len(parts) != 4 or not parts[0].isdigit() or parts[1] != host
                or int(parts[0]) == os.getpid() or path.is_symlink() or not path.is_dir()):
            continue
        try:
            os.kill(int(parts[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:  # alive but not ours (EPERM): leave it
            continue


def atomic_write(path: str | Path, write: Callable[[Path], None], *, durable: bool = False) -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file beside it,
    which is then renamed over ``path``. A reader sees the old file or the whole new one, and a
    failure (or Ctrl-C) leaves no partial file. With ``durable`` the data is flushed to disk
    before the rename, so a power cut cannot leave a renamed but empty file (checkpoints).

    Every writer of a single file in Tributary goes through here (``atomic_write_text``,
    ``atomic_write_bytes``, checkpoints, predictions, metrics)."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # a device or pipe (/dev/stdout, a FIFO): written in place, never renamed over, which
        # as root would replace the device node itself
        try:
            write(path)
        except OSError as exc:
            raise TributaryError(f"{path}: cannot write it ({exc.strerror or exc})") from None
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full or read-only disk, a folder that is a file: name the file
        raise TributaryError(f"{path}: cannot write it ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write` of bytes."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))

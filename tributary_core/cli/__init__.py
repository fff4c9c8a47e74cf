"""The ``tributary`` command line. Heavy imports happen inside commands so ``--help`` is fast.

User mistakes (:class:`~tributary_core.errors.TributaryError`) become one line on stderr and
exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import click

from tributary_core.errors import TributaryError

__all__ = ["cli", "main", "UserError"]


class UserError(click.ClickException):
    """A domain error shown as ``Error: <message>`` with exit code 2."""

    exit_code = 2


class _Group(click.Group):
    """A group whose commands turn :class:`TributaryError` into :class:`UserError`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a full disk or closed pipe behind stdout shows up here
            return result
        except TributaryError as exc:
            raise UserError(str(exc)) from None
        except StdoutError as exc:  # `> /dev/full`, or `| head` leaving early
            _quiet_stdout()
            if isinstance(exc.error, BrokenPipeError):  # the reader left: not an error
                ctx.exit(0)
            raise UserError(f"<stdout>: {exc.error.strerror}") from None
        except OSError as exc:
            # a file the user named, or the disk, refused: a read-only folder, a full disk,
            # a path under a file. Without a file name: the disk (no name known), or a bug,
            # which keeps its traceback.
            if exc.filename is None and exc.errno in _DISK_ERRORS:
                raise UserError(f"cannot write: {exc.strerror}") from None
            if exc.filename is None or exc.strerror is None:
                raise
            raise UserError(f"{exc.filename}: {exc.strerror}") from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


#: Errors of the disk or the file system, never of Tributary's code.
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.EIO})


class StdoutError(Exception):
    """Writing the command's standard output failed (``error``: the OSError)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _GuardedStdout:
    """``sys.stdout`` whose write failures are :class:`StdoutError`, so the CLI edge can tell
    them from a failure writing a file (both are OSErrors without a file name)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as exc:
            raise StdoutError(exc) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as exc:
            raise StdoutError(exc) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so flushing it at exit cannot fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test runner's capture)
        pass


def _version() -> str:
    from tributary_core import __version__

    return __version__


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=_version(), prog_name="tributary")
def cli() -> None:
    """Tributary: a foundation model for relational databases.

    Typical use: fetch a bundled database, check its metadata, preprocess, train.
    """


def _register() -> None:
    from tributary_core.cli import datasets, inspect, metadata, plugins, run, serve

    cli.add_command(plugins.plugins)
    cli.add_command(metadata.metadata)
    cli.add_command(datasets.datasets)
    cli.add_command(run.run)
    cli.add_command(inspect.inspect)
    cli.add_command(serve.serve)


_register()


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings from the core as one ``warning: ...`` line on stderr, without source lines."""
    click.echo(f"warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    import warnings

    warnings.showwarning = _show_warning
    if not isinstance(sys.stdout, _GuardedStdout):
        sys.stdout = _GuardedStdout(sys.stdout)
    cli.main(args=argv, prog_name="tributary", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())

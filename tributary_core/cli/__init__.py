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
            return super().invoke(ctx)
        except TributaryError as exc:
            raise UserError(str(exc)) from None
        except BrokenPipeError:  # `tributary ... | head`: the reader left; not an error
            _quiet_stdout()
            ctx.exit(0)
        except OSError as exc:
            # a file the user named, or the disk, refused: a read-only folder, a full disk,
            # a path under a file. Without a file name it may be a bug: keep the traceback,
            # except for a full disk behind stdout (`> /dev/full`).
            if exc.filename is None and exc.errno == errno.ENOSPC:
                _quiet_stdout()
                raise UserError(f"<stdout>: {exc.strerror}") from None
            if exc.filename is None or exc.strerror is None:
                raise
            raise UserError(f"{exc.filename}: {exc.strerror}") from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


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
    cli.main(args=argv, prog_name="tributary", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())

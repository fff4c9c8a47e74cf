"""``tributary plugins``: what is installed and where it came from."""

from __future__ import annotations

import json

import click


@click.group()
def plugins() -> None:
    """Installed semantic types, loss heads and embedder backends."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_plugins(as_json: bool) -> None:
    """List every semantic type, loss head and embedder with its distribution and version.

    Third-party plugins are loaded from entry points unless TRIBUTARY_DISABLE_PLUGIN_AUTOLOAD=1
    or TRIBUTARY_PLUGINS (a comma-separated list of distributions) says otherwise. A plugin that
    fails to load is reported (every other one is still listed) and the exit code is 2.
    """
    from tributary_core.errors import TributaryError
    from tributary_core.registry import Registry

    registry = Registry(skip_broken=True)
    rows = [
        {"name": c.name, "kind": c.kind, "distribution": c.source.distribution or "(python)",
         "version": c.source.version or "", "plugin": c.source.plugin, "target": c.target,
         "description": c.description}
        for c in registry.components()
    ]
    skipped = []  # one module may serve several groups: one line for it
    for s, why in registry.skipped:
        entry = {"plugin": s.plugin, "distribution": s.distribution, "reason": why}
        if entry not in skipped:
            skipped.append(entry)
    broken = list(dict.fromkeys(registry.broken))
    where = "under \"broken\"" if as_json else "above"
    failed = (f"{len(broken)} plugin problem(s), listed {where}; commands that load plugins fail "
              f"until each is fixed or left out" if broken else None)
    if as_json:
        click.echo(json.dumps({"components": rows, "skipped": skipped, "broken": broken}, indent=2))
        if failed:
            raise TributaryError(failed)
        return
    headers = ("name", "kind", "distribution", "version")  # then the description, unpadded
    widths = [max(len(h), *(len(r[h]) for r in rows)) for h in headers]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)) + "  DESCRIPTION")
    for r in rows:
        cells = "  ".join(r[h].ljust(w) for h, w in zip(headers, widths, strict=True))
        click.echo(f"{cells}  {r['description']}")
    for s in skipped:
        click.echo(f"not loaded: plugin {s['plugin']!r} from {s['distribution']} ({s['reason']})",
                   err=True)
    for message in broken:
        click.echo(f"broken: {message}", err=True)
    if failed:
        raise TributaryError(failed)

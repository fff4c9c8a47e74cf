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
    or TRIBUTARY_PLUGINS (a comma-separated list of distributions) says otherwise.
    """
    from tributary_core.registry import get_registry

    registry = get_registry()
    rows = [
        {"name": c.name, "kind": c.kind, "distribution": c.source.distribution or "(python)",
         "version": c.source.version or "", "plugin": c.source.plugin, "target": c.target,
         "description": c.description}
        for c in registry.components()
    ]
    skipped = [{"plugin": s.plugin, "distribution": s.distribution, "reason": why}
                for s, why in registry.skipped]
    if as_json:
        click.echo(json.dumps({"components": rows, "skipped": skipped}, indent=2))
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

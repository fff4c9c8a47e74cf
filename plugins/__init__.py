"""Tributary's built-in plugins, installed as ``tributary_plugins``.

They register through the same entry-point groups a third-party package uses (see the
project's ``pyproject.toml``); the core never imports them by path.
"""

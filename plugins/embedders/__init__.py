"""Built-in embedder backends, one module each, each its own entry point in
``tributary.embedders`` so that choosing one imports only that one."""

"""Built-in loss heads (null, huber, bce, infonce).

Registered through the ``tributary.losses`` entry-point group like any third-party package.
The heads arrive with the model and training loop; until then this plugin contributes none,
and ``tributary plugins list`` shows no loss heads.
"""

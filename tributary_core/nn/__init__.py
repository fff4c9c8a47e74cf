"""Torch building blocks shared by plugins: the value encoders a semantic type returns from
``value_encoder`` for each batch slot. Importing this module imports torch."""

from tributary_core.nn.encoders import LinearEncoder, PeriodicEncoder, PresenceEncoder, slot_encoder

__all__ = ["LinearEncoder", "PeriodicEncoder", "PresenceEncoder", "slot_encoder"]

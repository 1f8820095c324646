"""How long a test waits for something that should happen.

One generous deadline for every wait on a condition: the suite runs on busy 2-core machines
beside other CPU-heavy work, where a step that takes milliseconds alone can take seconds. A
deadline here only bounds how long a broken feature takes to fail; it never measures speed.
"""

from __future__ import annotations

PATIENCE = 60.0
"""Seconds a test waits for a condition (a message, a status, a server) before failing."""

__all__ = ("PATIENCE",)

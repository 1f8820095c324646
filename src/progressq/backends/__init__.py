"""Backends: bundles of a TaskQueue and a ClientRegistry.

``progressq.backends.memory`` serves one process; ``progressq.backends.redis`` many.
"""

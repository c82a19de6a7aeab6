"""VJP rules (the ``vjp`` capability), one module per op family, built from the templates in ``base``.

Every module here registers its rules in ``onnxslice.opsets.REGISTRY`` at import; ``onnxslice.grad``
walks the graph backwards and calls them.
"""

from __future__ import annotations

from .base import PerSampleUnsupported, VjpContext, VjpRule, unbroadcast

__all__ = ["PerSampleUnsupported", "VjpContext", "VjpRule", "unbroadcast"]

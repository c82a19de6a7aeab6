"""Re-export of :class:`onnxslice.scores.LayerScores`, the result type every layer ranking shares.

It lives below the analyses so that the passes and plans that read scores need not import them.
"""

from __future__ import annotations

from onnxslice.scores import LayerScores

__all__ = ["LayerScores"]

"""One module per capability: what a rule of that capability reads, returns and how it registers.

``info`` (:mod:`.info`), ``vjp`` (:mod:`.vjp`), ``contributions`` (:mod:`.contrib`) and ``prune``
(:mod:`.prune`). Op families (:mod:`onnxslice.opsets.ops`) build their rules on these and register them
in :data:`onnxslice.opsets.REGISTRY`; shared rule templates are in :mod:`onnxslice.opsets.templates`.
"""

from __future__ import annotations

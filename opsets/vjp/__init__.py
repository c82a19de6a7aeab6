"""The primitives VJP rules are written against, and their eager backend.

:mod:`.prims` declares the primitives (:class:`~.prims.Prims`) and the rule type of rules written
against them; :mod:`.eager` runs them on numpy with the kernels of :mod:`.kernels` (onnxruntime one-node
sessions) and :mod:`.conv_kernels` (convolution and window gradients), and registers primitive rules.
The rules themselves live with their op family in :mod:`onnxslice.opsets.ops`; the rule protocol
(:class:`~onnxslice.opsets.capabilities.vjp.VjpContext`) in :mod:`onnxslice.opsets.capabilities.vjp`.
"""

from __future__ import annotations

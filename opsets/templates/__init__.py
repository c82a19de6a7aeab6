"""Rule templates shared by several op families, one module per shape of op, every capability in it.

- :mod:`.gates`: one-to-one elementwise ops ``y = f(x)`` (gates such as Relu, smooth activations);
- :mod:`.binary`: broadcasting n-ary ops (operands aligned from the right);
- :mod:`.routing`: ops whose outputs are copies of input elements (layout, gather, nearest resize);
- :mod:`.axis`: ``prune`` templates for ops that act along some axes only.

Window geometry (Conv and pooling) is shared facts rather than a template: :mod:`onnxslice.opsets.geometry`.
"""

from __future__ import annotations

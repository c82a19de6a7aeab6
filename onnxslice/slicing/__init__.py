"""NNSlicer dynamic slicing (ALGORITHMS.md section 1): which neurons and synapses drive chosen outputs.

- :func:`slice` runs, after profiling (:mod:`onnxslice.profile`), the forward analysis (:mod:`.forward`)
  and the backward analysis (:mod:`.backward`, dispatching to the ``contributions`` rules in
  ``onnxslice.opsets.ops``) over the samples of a criterion, in parallel (:mod:`onnxslice.parallel`);
- :class:`Slice` holds the CONTRIB tables, summaries and ``save``/``load`` (the sliced model is the
  pass :func:`onnxslice.rewrite.slice_to_model`);
- :mod:`.targets` parses criteria (``pred``, ``class:K``, ``value:NAME[idx]``).
"""

from __future__ import annotations

from onnxslice.slicing.api import slice
from onnxslice.slicing.backward import BackwardOptions, backward
from onnxslice.slicing.forward import deltas, neuron_values
from onnxslice.slicing.result import Slice
from onnxslice.slicing.targets import Target, parse_targets, seed_tables

__all__ = [
    "BackwardOptions",
    "Slice",
    "Target",
    "backward",
    "deltas",
    "neuron_values",
    "parse_targets",
    "seed_tables",
    "slice",
]

"""NNSlicer ``contributions`` rules, one module per op family (see ALGORITHMS.md section 1).

A rule is a pure function ``rule(ctx: ContribContext) -> ContribResult``: it reads one node, the
recorded tensors of a batch of samples, the CONTRIB of the node's outputs and the options, and returns
the CONTRIB increments of its input neurons and of its weights (synapses). It never edits the graph
or any shared table; the engine in :mod:`onnxslice.slicing` owns the tables and the walk.
"""

from __future__ import annotations

from .base import ContribContext, ContribResult, sign_terms, theta_keep

__all__ = ["ContribContext", "ContribResult", "sign_terms", "theta_keep"]

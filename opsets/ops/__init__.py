"""One module per op family: the family's facts (attributes, geometry, axes, layer-ness, out-axis) once,
and every capability's rule registered beside them (``info``, ``vjp``, ``contributions``, ``prune``,
declared refusals), as JAX keeps a primitive's rules together while registering them in separate tables.
"""

from __future__ import annotations

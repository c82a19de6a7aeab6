"""Executors that map a function over independent units of work: local processes (default) or Ray.

``map_units(fn, units, shared, backend=...)`` calls ``fn(shared, unit, seed)`` for every unit and
returns the results in the order of ``units``. ``shared`` is sent once per worker (a process-pool
initializer, or one ``ray.put``), not once per unit. Each unit gets its own seed, derived from
``seed`` and its position only, so results are identical whatever the backend, the number of workers
or the order in which units finish. ``fn`` must be a module-level function (it is pickled).

Backends:

- ``"local"``: by default (``workers`` None or 1, or a single unit) the units run in this process, so a
  plain script can call the API without a ``if __name__ == "__main__":`` guard. ``workers=N`` (N > 1)
  uses a ``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start method (safe with
  onnxruntime's threads), at most one process per unit; like all Python multiprocessing, a script that
  asks for it needs the ``__main__`` guard. The CLI asks for one process per CPU by default.
- ``"ray"``: Ray tasks (``pip install 'onnxslice[ray]'``); ``address`` joins an existing cluster,
  otherwise a local Ray runtime with ``workers`` CPUs starts (and stays up for later calls).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, Literal, TypeVar

import numpy as np

from onnxslice.errors import OnnxSliceError

__all__ = ["Backend", "map_units", "ray_available", "unit_seeds"]

Backend = Literal["local", "ray"]
R = TypeVar("R")

_SHARED: Any = None


def unit_seeds(seed: int, n: int) -> list[int]:
    """One independent 32-bit seed per unit, from ``seed`` and the unit's position."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def ray_available() -> bool:
    """Whether Ray can be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _init_worker(shared: Any) -> None:
    global _SHARED
    _SHARED = shared


def _call_local(fn: Callable[[Any, Any, int], Any], unit: Any, seed: int) -> Any:
    return fn(_SHARED, unit, seed)


def _call_ray(fn: Callable[[Any, Any, int], Any], shared: Any, unit: Any, seed: int) -> Any:
    return fn(shared, unit, seed)


def map_units(
    fn: Callable[[Any, Any, int], R],
    units: Sequence[Any],
    shared: Any = None,
    *,
    backend: Backend = "local",
    workers: int | None = None,
    address: str | None = None,
    seed: int = 0,
) -> list[R]:
    """``[fn(shared, unit, seed_i) for unit in units]`` on the chosen backend (see the module docstring).

    Raises:
        OnnxSliceError: an unknown backend, bad ``workers``, or Ray requested but not installed.
    """
    if workers is not None and workers < 1:
        raise OnnxSliceError(f"workers must be >= 1, got {workers}")
    if address and backend != "ray":
        raise OnnxSliceError(f"a Ray address ({address}) was given with the '{backend}' backend; add --backend ray "
                             "or drop --address")
    seeds = unit_seeds(seed, len(units))
    if backend == "local":
        n = min(workers or 1, len(units))
        if n <= 1:
            return [fn(shared, u, s) for u, s in zip(units, seeds, strict=True)]
        ctx = get_context("spawn")
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(shared,)) as ex:
            futures = [ex.submit(_call_local, fn, u, s) for u, s in zip(units, seeds, strict=True)]
            return [f.result() for f in futures]
    if backend == "ray":
        return _map_ray(fn, units, shared, seeds, workers, address)
    raise OnnxSliceError(f"unknown backend '{backend}'; use 'local' or 'ray'")


def _map_ray(
    fn: Callable[[Any, Any, int], R],
    units: Sequence[Any],
    shared: Any,
    seeds: list[int],
    workers: int | None,
    address: str | None,
) -> list[R]:
    try:
        import ray
    except ImportError as e:
        raise OnnxSliceError("backend 'ray' needs Ray: pip install 'onnxslice[ray]'") from e
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = workers or os.cpu_count() or 1
        ray.init(**kwargs)
    ref = ray.put(shared)
    task = ray.remote(num_cpus=1)(_call_ray)
    return list(ray.get([task.remote(fn, ref, u, s) for u, s in zip(units, seeds, strict=True)]))

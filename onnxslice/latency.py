"""Measured latency: what each candidate channel count of each prunable group costs, in context.

onnxruntime's cost of a channel count is a step function, not a line: on CPU its NCHWc layout runs a
Conv in blocks of 16 channels (AVX-512; 8 on AVX2), and a count that breaks the blocks falls back to
plain kernels with layout reorders around them, so a model with fewer FLOPs can run slower. So the
cost is measured, never assumed. For every prunable channel group and every candidate count ``k``
(multiples of the kernel block at a few fractions of the group, plus one count between blocks to show
the step):

- on the block: the group's nodes and everything between them, plus one Conv of context on each side
  (layer with context: onnxruntime's layout choice at a boundary depends on both sides), are cut out
  of the model, and the cut and uncut subgraphs are timed round-robin (each repeat runs all of them
  in turn, starting one later each time; 20th-percentile times, since preemption on a loaded machine
  only adds time). The entry is ``1 - (1 - t_cut / t_uncut) * share``, ``share`` being the
  subgraph's fraction of the model's MACs: a ratio of short runs under the same conditions, weighted
  by how much of the model the subgraph is (timing the whole model alongside biases the share on a
  loaded machine: long runs are preempted more than short ones);
- off the block: the whole model with only that group cut, against the original, round-robin
  (ratio of 20th-percentile times): onnxruntime's layout changes around such a count reach beyond
  the group.

Among the kernel-aligned counts the ratios are made non-decreasing in ``k`` and at most 1 (isotonic
fit: fewer channels never cost more, up to noise), and no count is credited a saving larger than
``FLOP_CAP`` times the fraction of the model's FLOPs it removes; the counts between blocks keep their
raw measurement.

The table predicts a plan's latency additively: ``1 + sum_g (r_g(k_g) - 1)``, which ignores the cross
term of a layer losing both input and output channels; planners check the result by measuring the
pruned model (see :mod:`onnxslice.plans.latency_plan`).

Tables are cached as JSON under ``cache_dir`` (default ``$ONNXSLICE_CACHE`` or
``~/.cache/onnxslice``; never beside the model), keyed by the model's fingerprint, the execution
provider, the batch, the thread count, the candidate grid, the CPU and the onnxruntime version.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxslice.console import progress
from onnxslice.cpu import cpu_flags, cpu_name
from onnxslice.errors import OnnxSliceError
from onnxslice.flops import count_macs
from onnxslice.io import save_json
from onnxslice.model import Model, load
from onnxslice.rewrite.groups import discover_groups
from onnxslice.rewrite.prune import _apply_structured
from onnxslice.session import median_ratios, round_robin_times, timed_sessions

__all__ = [
    "DEFAULT_FRACTIONS",
    "LatencyTable",
    "cache_dir",
    "candidate_counts",
    "kernel_block",
    "latency_table",
    "load_average",
    "median_ratios",
    "quantile_ms",
    "random_feed",
    "subgraph",
    "timed_sessions",
]

#: Fractions of a group's channels (snapped to the kernel block) at which the step function is measured.
DEFAULT_FRACTIONS = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
QUICK_FRACTIONS = (0.75, 0.5, 0.25)
#: The saving credited to a count on the kernel block is at most this multiple of the FLOPs it saves.
FLOP_CAP = 2.0
DEVICES = ("cpu", "cuda")


def kernel_block(device: str = "cpu") -> int:
    """The channel block onnxruntime's kernels want on ``device``.

    CPU: 16 with AVX-512 (NCHWc blocks of 16 floats), 8 with AVX2, 4 otherwise (SSE/NEON). CUDA: 8
    (tensor-core friendly multiples).
    """
    if device == "cuda":
        return 8
    flags = cpu_flags()
    if "avx512f" in flags:
        return 16
    if "avx2" in flags:
        return 8
    return 4


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not report it)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Where latency tables are cached: ``path``, else ``$ONNXSLICE_CACHE``, else ``~/.cache/onnxslice``."""
    if path is not None:
        return Path(path)
    env = os.environ.get("ONNXSLICE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "onnxslice"


def candidate_counts(size: int, block: int, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     min_keep: float = 0.1) -> list[int]:
    """Kept channel counts to measure for a group of ``size`` channels, largest first.

    The full count, multiples of ``block`` nearest to each fraction of ``size`` (at least one block
    and at least ``min_keep`` of the group), and one count between blocks (``size - block // 2`` for a
    group of at least two blocks) that shows the step.
    """
    out = {size}
    floor = max(1, int(np.ceil(min_keep * size)))
    if size <= block:
        half = max(floor, size // 2)
        if half < size:
            out.add(half)
    else:
        for f in fractions:
            k = round(f * size / block) * block
            if block <= k < size and k >= floor:
                out.add(k)
        if size >= 2 * block and size - block // 2 >= floor:
            out.add(size - block // 2)
    return sorted(out, reverse=True)


def random_feed(model: Model, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the model's shape (symbolic first axis = ``batch``, other symbolic axes = 1)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for v in model.inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in (v.shape or [1])]
        if v.shape and not (isinstance(v.shape[0], int) and v.shape[0] > 0):
            shape[0] = batch
        dtype = np.dtype(v.dtype or np.float32)
        if np.issubdtype(dtype, np.floating):
            feed[v.name] = rng.random(shape).astype(dtype)
        else:
            feed[v.name] = np.zeros(shape, dtype=dtype)
    return feed


def _node_range(proto: Any, weights: set[str], context: int = 1) -> tuple[int, int]:
    """Index range of the nodes that read any of ``weights``, widened by ``context`` Convs on each side.

    The neighbouring Convs are part of the measurement because onnxruntime's layout choice at the
    boundary (blocked or plain, with reorders between) depends on both sides.
    """
    nodes = proto.graph.node
    idx = [i for i, n in enumerate(nodes) if weights & set(n.input)]
    if not idx:
        return 0, len(nodes) - 1
    first, last = min(idx), max(idx)
    seen = 0
    while first > 0 and seen < context:
        first -= 1
        seen += nodes[first].op_type in ("Conv", "Gemm", "MatMul")
    seen = 0
    while last < len(nodes) - 1 and seen < context:
        last += 1
        seen += nodes[last].op_type in ("Conv", "Gemm", "MatMul")
    return first, last


def subgraph(proto: Any, first: int, last: int) -> Any:
    """The nodes ``first..last`` (topological order) of ``proto`` as a model of their own.

    Its inputs are the tensors those nodes read that are neither produced among them nor
    initializers; its outputs the tensors they produce that later nodes or the graph outputs read.
    Types and shapes come from ``proto``'s value_info (run shape inference first).
    """
    import onnx
    from onnx import helper

    g = proto.graph
    nodes = list(g.node[first : last + 1])
    produced = {o for n in nodes for o in n.output if o}
    inits = {t.name: t for t in g.initializer}
    infos = {v.name: v for v in [*g.input, *g.value_info, *g.output]}
    used_later = {i for n in g.node[last + 1 :] for i in n.input} | {o.name for o in g.output}
    ins: list[str] = []
    for n in nodes:
        for i in n.input:
            if i and i not in produced and i not in inits and i not in ins:
                ins.append(i)
    outs = [o for n in nodes for o in n.output if o in used_later]
    missing = [t for t in [*ins, *outs] if t not in infos]
    if missing:
        raise OnnxSliceError(f"no shape for tensor(s) {', '.join(missing[:3])} of the timed subgraph (a bug)")
    used = {i for n in nodes for i in n.input}
    graph = helper.make_graph(nodes, "context", [infos[i] for i in ins], [infos[o] for o in outs],
                              [inits[i] for i in used if i in inits])
    out = helper.make_model(graph, opset_imports=list(proto.opset_import))
    out.ir_version = proto.ir_version
    return onnx.shape_inference.infer_shapes(out)


def quantile_ms(sessions: Sequence[Any], feed: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
                repeats: int = 15, warmup: int = 2, q: float = 20.0) -> list[float]:
    """Round-robin timing; the ``q``-th percentile of each session's times in ms.

    ``feed`` is one feed for all sessions or one per session. A low percentile estimates the
    uncontended cost: on a loaded machine, preemption only adds time. It is robust with few repeats, so
    ``repeats`` is taken as given (no minimum measured time), which keeps a latency table of many small
    subgraphs quick.
    """
    feeds = list(feed) if isinstance(feed, Sequence) else [feed] * len(sessions)
    times = round_robin_times(sessions, feeds, repeats, warmup, min_total_ms=0)
    return [float(v) for v in np.percentile(times, q, axis=0)]


def _feed_of(proto: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    from onnx import helper

    rng = np.random.default_rng(seed)
    feed = {}
    for v in proto.graph.input:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        shape = [d if d is not None else (batch if i == 0 else 1) for i, d in enumerate(dims)]
        dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feed[v.name] = rng.random(shape).astype(dtype) if np.issubdtype(dtype, np.floating) else \
            np.zeros(shape, dtype=dtype)
    return feed


def _macs(proto: Any) -> int:
    return int(count_macs(load(proto, check=False, infer_shapes=False)).total)


def _isotonic(ks: list[int], rs: list[float]) -> list[float]:
    """Non-decreasing fit of ``rs`` over increasing ``ks`` (pool adjacent violators)."""
    order = np.argsort(ks)
    y = [float(rs[i]) for i in order]
    blocks: list[list[float]] = [[v, 1.0] for v in y]
    i = 0
    while i < len(blocks) - 1:
        if blocks[i][0] > blocks[i + 1][0]:
            a, b = blocks[i], blocks[i + 1]
            w = a[1] + b[1]
            blocks[i] = [(a[0] * a[1] + b[0] * b[1]) / w, w]
            del blocks[i + 1]
            i = max(i - 1, 0)
        else:
            i += 1
    fit: list[float] = []
    for v, w in blocks:
        fit += [v] * int(w)
    out = [0.0] * len(ks)
    for pos, i in enumerate(order):
        out[i] = fit[pos]
    return out


@dataclass
class LatencyTable:
    """Measured in-context latency of every candidate channel count of every prunable group.

    Attributes:
        fingerprint: the model's fingerprint.
        device: execution provider (``cpu`` or ``cuda``).
        batch: batch size of the timed runs.
        threads: intra-op threads (pinned).
        block: the kernel channel block on this device.
        base_ms: median latency of the original model (ms).
        groups: group leader -> {kept count -> latency ratio to the original, that group alone cut}.
        raw: the same before the isotonic fit.
        sizes: group leader -> channel count of the original.
        meta: how it was measured (repeats, CPU, onnxruntime version, load average, seconds).
    """

    fingerprint: str
    device: str
    batch: int
    threads: int
    block: int
    base_ms: float
    groups: dict[str, dict[int, float]]
    raw: dict[str, dict[int, float]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def predict(self, kept: Mapping[str, int]) -> float:
        """Predicted latency ratio of a plan (group leader -> kept channels; absent groups stay whole).

        Raises:
            OnnxSliceError: a count that is not in the table.
        """
        total = 1.0
        for leader, k in kept.items():
            row = self.groups.get(leader)
            if row is None or k == self.sizes.get(leader):
                continue
            if k not in row:
                raise OnnxSliceError(f"the latency table has no entry for {k} channels of group '{leader}'; "
                                     f"measured: {sorted(row)}")
            total += row[k] - 1.0
        return total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (counts as strings)."""
        d = asdict(self)
        d["groups"] = {g: {str(k): v for k, v in row.items()} for g, row in self.groups.items()}
        d["raw"] = {g: {str(k): v for k, v in row.items()} for g, row in self.raw.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatencyTable:
        """Inverse of :meth:`to_dict`."""
        conv = {g: {int(k): float(v) for k, v in row.items()} for g, row in d["groups"].items()}
        raw = {g: {int(k): float(v) for k, v in row.items()} for g, row in d.get("raw", {}).items()}
        return cls(str(d["fingerprint"]), str(d["device"]), int(d["batch"]), int(d["threads"]), int(d["block"]),
                   float(d["base_ms"]), conv, raw, {k: int(v) for k, v in d.get("sizes", {}).items()},
                   dict(d.get("meta", {})))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write as JSON (atomic)."""
        return save_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        """Read a table written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def rows(self) -> list[dict[str, Any]]:
        """One row per group: size and the measured ratio at each candidate count."""
        return [{"group": g, "channels": self.sizes.get(g),
                 "kept -> latency ratio": ", ".join(f"{k}:{self.raw.get(g, row).get(k, v):.3f}"
                                                     for k, v in sorted(row.items(), reverse=True))}
                for g, row in self.groups.items()]


def _cache_file(root: Path, model: Model, device: str, batch: int, threads: int, fractions: Sequence[float],
                block: int) -> Path:
    import onnxruntime as ort

    key = json.dumps([model.fingerprint, device, batch, threads, list(fractions), block, cpu_name(),
                      ort.__version__, 7])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return root / "latency" / f"{model.fingerprint[:12]}-{device}-b{batch}-t{threads}-{digest}.json"


def latency_table(
    model: Model,
    *,
    device: str = "cpu",
    batch: int = 1,
    threads: int = 1,
    repeats: int = 15,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    block: int | None = None,
    cache: str | os.PathLike[str] | bool | None = None,
    feed: Mapping[str, np.ndarray] | None = None,
    show_progress: bool | None = None,
) -> LatencyTable:
    """Measure (or read from the cache) the latency table of ``model`` on ``device`` at ``batch``.

    Args:
        model: the model.
        device: ``"cpu"`` or ``"cuda"`` (raises when CUDA is not usable).
        batch: batch size of the timed runs.
        threads: intra-op threads, pinned (1 by default, so shared machines measure fairly).
        repeats: round-robin repeats per group (the median ratio is kept).
        fractions: kept fractions measured (snapped to multiples of ``block``).
        block: kernel channel block (default :func:`kernel_block` of ``device``).
        cache: a cache folder, None for the default (:func:`cache_dir`), False for no cache.
        feed: inputs to time with (default: random of the model's shape at ``batch``).
        show_progress: progress bar on stderr (default: ``ONNXSLICE_PROGRESS`` / a terminal).

    Raises:
        OnnxSliceError: an unknown device, CUDA requested but unusable, or no prunable group.
    """
    if device not in DEVICES:
        raise OnnxSliceError(f"unknown device '{device}'; use cpu or cuda")
    block = int(block or kernel_block(device))
    path = None
    if cache is not False:
        path = _cache_file(cache_dir(None if cache is None or cache is True else cache), model, device, batch,
                           threads, fractions, block)
        if path.is_file():
            try:
                return LatencyTable.load(path)
            except (OSError, ValueError, KeyError):
                pass  # a broken cache entry is measured again
    gset = discover_groups(model)
    groups = gset.prunable
    if not groups:
        raise OnnxSliceError("no layer of this model can be pruned structurally, so there is no latency table")
    x = dict(feed) if feed is not None else random_feed(model, batch)
    t0 = time.perf_counter()
    load_before = load_average()
    base = timed_sessions([model.proto], device, threads)
    base_ms = quantile_ms(base, x, repeats)[0]
    same = _apply_structured(model, {}, gset)  # the original through the same export (node order, shapes)
    inits = {t.name for t in same.graph.initializer}
    table: dict[str, dict[int, float]] = {}
    raw: dict[str, dict[int, float]] = {}
    macs: dict[str, dict[int, float]] = {}
    base_macs = max(_macs(same), 1)
    for g in progress(groups, len(groups), "latency table", show_progress):
        ks = [k for k in candidate_counts(g.size, block, fractions) if k < g.size and (g.size - k) % g.segments == 0]
        ks = [k for k in ks if g.size - k <= g.max_removable()]
        row = {g.size: 1.0}
        on_grid = [k for k in ks if k % block == 0]
        off_grid = [k for k in ks if k % block]
        macs[g.leader] = {}
        protos_on: list[Any] = []
        if on_grid:  # the group's nodes with a Conv of context on each side, cut and uncut
            protos = protos_on = [_apply_structured(model, {g.leader: np.arange(g.size - k)}, gset) for k in on_grid]
            weights = {name for name, _ in g.cuts} & inits
            try:
                subs = [subgraph(p, *_node_range(p, weights)) for p in [same, *protos]]
                ms = quantile_ms(timed_sessions(subs, device, threads), _feed_of(subs[0], batch), repeats)
                share = _macs(subs[0]) / base_macs  # the subgraph's share of the model's work
                row.update({k: 1.0 - (1.0 - m / ms[0]) * share for k, m in zip(on_grid, ms[1:], strict=True)})
            except OnnxSliceError:
                off_grid = ks
        if off_grid:  # counts between blocks change onnxruntime's layout beyond the group: the whole model
            protos = [_apply_structured(model, {g.leader: np.arange(g.size - k)}, gset) for k in off_grid]
            ms = quantile_ms(base + timed_sessions(protos, device, threads), x, repeats)
            row.update({k: m / ms[0] for k, m in zip(off_grid, ms[1:], strict=True)})
        raw[g.leader] = dict(row)
        aligned = [k for k in row if k % block == 0 or k == g.size]
        fit = dict(zip(aligned, _isotonic(aligned, [row[k] for k in aligned]), strict=True))
        fit = {k: min(v, 1.0) for k, v in fit.items()}  # a cut on the block never costs more than none
        fit[g.size] = 1.0
        if on_grid:  # a saving beyond FLOP_CAP x the FLOPs saved is measurement noise on a loaded machine
            for k, proto in zip(on_grid, protos_on, strict=True):
                macs[g.leader][k] = 1.0 - _macs(proto) / base_macs
                fit[k] = max(fit[k], 1.0 - FLOP_CAP * macs[g.leader][k])
        table[g.leader] = {**row, **fit}
    import onnxruntime as ort

    meta = {
        "repeats": repeats, "fractions": list(fractions), "cpu": cpu_name(), "onnxruntime": ort.__version__,
        "load_average": [load_before, load_average()], "seconds": round(time.perf_counter() - t0, 2),
        "flop_cap": FLOP_CAP,
        "macs_saved": {g: {str(k): v for k, v in row.items()} for g, row in macs.items()},
        "how": "counts on the kernel block: the group's nodes and everything between them plus one Conv on each "
               "side (layer with context), cut and uncut, timed round-robin, ratio = 1 - (1 - q20 cut / q20 "
               "uncut) x the subgraph's share of the model's MACs; counts off the block: the whole model with "
               "the group cut against the original, ratio of q20 times",
    }
    out = LatencyTable(model.fingerprint, device, batch, threads, block, base_ms, table, raw,
                       {g.leader: g.size for g in groups}, meta)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        out.save(path)
    return out

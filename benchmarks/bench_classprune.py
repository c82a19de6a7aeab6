"""NNSlicer class-focused pruning (the paper's Figure 3): target-class accuracy vs pruning ratio.

Run ``python benchmarks/bench_classprune.py`` (quick: 3 target subsets, 50 slice samples per subset,
at most 500 test images, r in {0.2, 0.4, 0.55}) or ``--full`` (10 subsets, 200 slice samples on LeNet-5 / 100 on
ResNet-8, every target-class test image, r = 0.1-0.6) from the repository root. No fine-tuning
anywhere. Slices and per-seed rows are cached under ``--cache`` (default ``out/classprune-cache``), so
an interrupted run resumes and a slice (which does not depend on r) serves every ratio and scope.

Per model (``lenet5``, ``resnet8_mnist``) and per *seed* (a target subset of two classes drawn from
``numpy.random.default_rng(seed)``, redrawn while a lower seed has it), the fraction ``r`` is removed
per layer in one of two *scopes*:

- ``layer`` (unstructured): every layer loses the fraction ``r`` of its weights;
- ``channel`` (structured, filter pruning): every layer except the output one loses the fraction ``r``
  of its output channels (Conv filters, Gemm neurons): the filter, its bias and its BatchNormalization
  scale and shift are zeroed, so the channel outputs 0 (checked against the library's structured
  ``prune`` on LeNet-5). A channel's score is the sum of its synapses' scores (ties: smallest L1).
  This is the setting in which our magnitude baseline lands closest to the paper's (``--settings``).

The weights (or channels) are chosen by:

- ``slice-targeted``: smallest ``|CONTRIB|`` of the Slice of NNSlicer's criterion (I_T, O_T) (the
  target classes' training samples, their output neurons), CONTRIB accumulated as signs (NNSlicer);
- ``slice-targeted-abs``: the same slice with ``accumulate="abs"`` (the number of significant uses);
- ``slice-all``: the slice of every class (samples of all classes, ``pred`` target), signed;
- ``slice-then-magnitude``: the weights outside the targeted slice (CONTRIB 0) first, then the smallest
  ``|w|`` (a hybrid: the slice says *whether* a synapse serves the target classes, the magnitude how much);
- ``slice-abs-x-magnitude``: smallest ``count * |w|`` (the abs slice's significant uses times the weight's
  magnitude: how often times how much);
- ``slice-neuron``: the targeted slice's *neuron* CONTRIB: a channel's score is ``|CONTRIB|`` of its output
  values summed over positions (NNSlicer's neuron table: channel pruning by the slice's neurons); per
  weight it is shared by the channel's synapses (so within a channel, the smallest ``|w|`` goes first);
- ``slice-targeted-bnfold``: the signed targeted slice of the model with every BatchNormalization folded
  into the Conv before it (so CONTRIB's theta sees the real weight scale), mapped back to the weights;
- ``magnitude``: smallest ``|w|`` (the usual baseline);
- ``magnitude-bnfold``: smallest ``|w|`` of the weights with every BatchNormalization folded in (the
  weight's real scale: a BN multiplies each output channel by its own ``g / sqrt(v + eps)``, which the raw
  ``|w|`` of a Conv followed by a BN ignores; identical to ``magnitude`` without BN);
- ``random``: uniformly random weights (seeded).

Measured on the target classes' test samples: ``acc_all`` (argmax over all ten classes: the accuracy
that NNSlicer's Figure 3 plots) and ``acc_targets`` (argmax restricted to the target classes); a row is
``collapsed`` when one class takes >= 95% of the predictions (then ``acc_all`` is about 0.5 when that class
is a target, 0 otherwise: a chance level, not a ranking's merit).
``--bn-recalibrate`` adds every method again after re-estimating each BatchNormalization's mean and
variance on 256 training samples (in graph order): it separates the error that the slice can see
(deviations from the mean) from the shift of the mean that a removed weight also causes.
``--mean-compensate`` adds every method again (scope ``layer``) with each pruned synapse's input replaced
by its profiled mean (``w * E[x]`` folded into the bias or the BN's mean, no training): the pruning
operation whose error is exactly what CONTRIB measures (``w * (x - E[x])``).
``--settings`` measures only the magnitude baseline under several definitions of r (per layer or one
global ranking, first/last layer included or not, weights or channels) against the paper's.

Results: ``benchmarks/results/classprune.json`` and ``classprune.png`` (mean +- std over seeds).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import onnxslice as osl  # noqa: E402
from models import zoo  # noqa: E402
from onnxslice.console import format_table  # noqa: E402
from onnxslice.io import atomic_path, save_json  # noqa: E402
from onnxslice.plans import plan_pruning  # noqa: E402
from onnxslice.plans.prune_plan import class_slice  # noqa: E402
from onnxslice.rewrite import prune  # noqa: E402
from onnxslice.rewrite.fidelity import run_outputs  # noqa: E402

MODELS = ("lenet5", "resnet8_mnist")
METHODS = ("slice-targeted", "slice-targeted-abs", "slice-all", "slice-then-magnitude", "slice-abs-x-magnitude",
           "slice-neuron", "slice-targeted-bnfold", "magnitude", "magnitude-bnfold", "random")
SLICE_KINDS = ("slice-targeted", "slice-targeted-abs", "slice-all", "slice-targeted-bnfold")
SCOPES = ("layer", "channel")
#: NNSlicer Figure 3 (accuracy on the target classes, no fine-tuning).
PAPER = {"slice-targeted": {0.2: 0.93, 0.55: 0.80}, "magnitude": {0.2: 0.905, 0.55: 0.405}}
PAPER_055 = {k: v[0.55] for k, v in PAPER.items()}
#: bumped when a row's fields change, so that cached rows are recomputed (cached slices stay valid)
ROWS_VERSION = 2


def target_subset(seed: int, k: int = 2) -> list[int]:
    """The ``k`` target classes of a seed: drawn from ``default_rng(seed)``, redrawn while a lower seed has them.

    (Without the redraw, seeds 6 and 7 would repeat the classes of seeds 1 and 5.) Seeds past the number of
    distinct subsets (45 pairs of ten classes) are refused.
    """
    return list(_target_subset(seed, k))


@functools.cache
def _target_subset(seed: int, k: int) -> tuple[int, ...]:
    if seed >= math.comb(10, k):
        raise SystemExit(f"seed {seed}: only {math.comb(10, k)} distinct sets of {k} target classes exist")
    used = [_target_subset(s, k) for s in range(seed)]  # memoized: each lower seed is drawn once
    rng = np.random.default_rng(seed)
    while True:
        subset = tuple(sorted(int(c) for c in rng.choice(10, k, replace=False)))
        if subset not in used:
            return subset


def tag(name: str, seed: int) -> str:
    """Cache file prefix of a model and seed (the target classes included)."""
    return f"{name}-seed{seed}-t{''.join(map(str, target_subset(seed)))}"


def with_initializers(model: osl.Model, new: dict[str, np.ndarray], note: str) -> osl.Model:
    """``model`` with the initializers named in ``new`` replaced (same names, float32)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    for init in proto.graph.initializer:
        if init.name in new:
            init.CopyFrom(numpy_helper.from_array(np.asarray(new[init.name], np.float32), init.name))
    return model.with_proto(proto, note)


def recalibrate_bn(model: osl.Model, calib: dict[str, np.ndarray]) -> osl.Model:
    """Every BatchNormalization's mean and variance re-estimated on ``calib``, in graph order."""
    from onnxslice.record import Recorder

    for node in [n for n in model.nodes if n.op_type == "BatchNormalization"]:
        x = Recorder(model, "all").run(calib)[node.inputs[0]].astype(np.float64)
        axes = (0, *range(2, x.ndim))
        model = with_initializers(model, {node.inputs[3]: x.mean(axis=axes), node.inputs[4]: x.var(axis=axes)},
                                  "BatchNormalization statistics re-estimated")
    return model


def mean_compensate(model: osl.Model, pruned: osl.Model, prof: Any) -> osl.Model:
    """``pruned`` with every removed synapse's input replaced by its profiled mean instead of 0.

    NNSlicer measures a synapse's contribution as ``w * (x - E[x])``: the error of pruning it is that
    only if the pruned synapse still passes ``w * E[x]``. That constant goes into the layer's bias (or,
    for a Conv without bias followed by a BatchNormalization, is taken off the BN's running mean): per
    output channel ``c_o = sum_i R[o, i] * E[x_i]`` with ``R`` the removed weights and, for a Conv, the
    input's channel mean (the spatial average; zero padding at the borders is ignored). No training.
    """
    new: dict[str, np.ndarray] = {}
    for x in model.layers:
        w0, w1 = model.initializer(x.weight), pruned.initializer(x.weight)
        removed = np.where(w1 == 0, w0, 0).astype(np.float64)
        if not removed.any():
            continue
        node = model.node(x.name)
        mean = np.asarray(prof.mean[node.inputs[0] if x.weight_input != 0 else node.inputs[1]], np.float64)
        r = np.moveaxis(removed, x.out_axis, 0)
        if x.op_type == "Conv":
            c = r.sum(axis=tuple(range(2, r.ndim))) @ mean.reshape(mean.shape[0], -1).mean(1)
        else:
            c = r.reshape(r.shape[0], -1) @ mean.reshape(-1)
        bn = following_bn(model, x)
        if x.bias:
            new[x.bias] = pruned.initializer(x.bias) + c
        elif bn is not None:
            new[bn.inputs[3]] = pruned.initializer(bn.inputs[3]) - c
    return with_initializers(pruned, new, "pruned synapses replaced by their mean input")


def check_mean_compensation(model: osl.Model, prof: Any, feed: dict[str, np.ndarray]) -> float:
    """Max relative error of :func:`mean_compensate` on the Gemm layers against ``W_kept x + R E[x] + b``.

    Prunes half of every layer's weights at random, compensates, and recomputes each Gemm's output in
    numpy from its recorded input; raises if they differ.
    """
    from onnxslice.record import Recorder

    rng = np.random.default_rng(0)
    new = {x.weight: model.initializer(x.weight) * (rng.random(model.initializer(x.weight).shape) < 0.5)
           for x in model.layers}
    pruned = with_initializers(model, new, "random half")
    comp = mean_compensate(model, pruned, prof)
    got = Recorder(comp, "all").run(feed)
    worst = 0.0
    for x in model.layers:
        node = model.node(x.name)
        if x.op_type != "Gemm" or not x.bias or node.attr("transA", 0) or not node.attr("transB", 0):
            continue
        xin = got[node.inputs[0]].astype(np.float64)
        kept, w0 = new[x.weight].astype(np.float64), model.initializer(x.weight).astype(np.float64)
        mean = np.asarray(prof.mean[node.inputs[0]], np.float64)
        ref = xin @ kept.T + mean @ (w0 - kept).T + model.initializer(x.bias)
        worst = max(worst, float(np.abs(got[x.output] - ref).max() / np.abs(ref).max()))
    if worst > 1e-4:
        raise RuntimeError(f"mean compensation differs from its definition by {worst} (relative)")
    return worst


def following_bn(model: osl.Model, layer: Any) -> Any:
    """The BatchNormalization that is the only consumer of ``layer``'s output, or None."""
    users = model.consumers(layer.output)
    return users[0] if len(users) == 1 and users[0].op_type == "BatchNormalization" else None


def fold_bn(model: osl.Model) -> osl.Model:
    """Every Conv -> BatchNormalization pair folded into the Conv (same weight names; the BN node goes).

    ``w' = w * g / sqrt(v + eps)``, ``b' = (b - mean) * g / sqrt(v + eps) + beta``; outputs are unchanged
    (checked by the caller against the original model).
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    inits = {i.name: i for i in proto.graph.initializer}
    drop: list[Any] = []
    for layer in model.layers:
        bn = following_bn(model, layer)
        if bn is None or layer.op_type != "Conv":
            continue
        g, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.inputs[1:5])
        scale = g / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
        w = numpy_helper.to_array(inits[layer.weight]).astype(np.float64)
        b = numpy_helper.to_array(inits[layer.bias]).astype(np.float64) if layer.bias else np.zeros(w.shape[0])
        inits[layer.weight].CopyFrom(numpy_helper.from_array(
            (w * scale.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32), layer.weight))
        bias_name = layer.bias or f"{layer.weight}__folded_bias"
        new_b = numpy_helper.from_array(((b - mean) * scale + beta).astype(np.float32), bias_name)
        if layer.bias:
            inits[bias_name].CopyFrom(new_b)
        else:
            proto.graph.initializer.append(new_b)
        for node in proto.graph.node:
            if node.name == layer.name:
                if not layer.bias:
                    node.input.append(bias_name)
                node.output[0] = bn.outputs[0]
            if node.name == bn.name:
                drop.append(node)
    for node in drop:
        proto.graph.node.remove(node)
    del proto.graph.value_info[:]
    return model.with_proto(onnx.shape_inference.infer_shapes(proto), "BatchNormalization folded into the Convs")


def channel_layers(model: osl.Model) -> list[Any]:
    """The layers whose output channels the channel scope prunes: every layer but the output ones."""
    return [x for x in model.layers if x.output not in model.output_names]


def channel_scores(model: osl.Model, layer: Any, weight_scores: np.ndarray) -> np.ndarray:
    """Per output channel of ``layer``: the sum of its synapses' scores."""
    s = np.moveaxis(np.asarray(weight_scores, np.float64), layer.out_axis, 0)
    return s.reshape(s.shape[0], -1).sum(1)


def zero_channels(model: osl.Model, removed: dict[str, np.ndarray]) -> osl.Model:
    """Zero the output channels ``removed[layer]`` (filter, bias, BN scale and shift): each outputs 0."""
    new: dict[str, np.ndarray] = {}
    for x in model.layers:
        idx = removed.get(x.name)
        if idx is None or not len(idx):
            continue
        w = np.moveaxis(model.initializer(x.weight).copy(), x.out_axis, 0)
        w[idx] = 0
        new[x.weight] = np.moveaxis(w, 0, x.out_axis)
        bn = following_bn(model, x)
        for name in ([x.bias] if x.bias else []) + (list(bn.inputs[1:3]) if bn is not None else []):
            v = model.initializer(name).copy()
            v[idx] = 0
            new[name] = v
    return with_initializers(model, new, "channels zeroed")


def check_channel_zeroing(model: osl.Model, data: Any) -> float:
    """Max |difference| between zeroing channels and the library's structured ``prune`` removing them.

    Only for models whose pruned layers are each their own channel group (LeNet-5); raises if it differs.
    """
    from onnxslice.rewrite.plan import Plan

    rng = np.random.default_rng(0)
    removed = {x.name: np.sort(rng.choice(x.out_channels, x.out_channels // 2, replace=False))
               for x in channel_layers(model)}
    zeroed = zero_channels(model, removed)
    plan = Plan("prune", {k: {"remove": v.tolist()} for k, v in removed.items()}, "uniform", {"mode": "structured"})
    cut = prune(model, plan)
    diff = float(np.abs(run_outputs(zeroed, data)[0] - run_outputs(cut, data)[0]).max())
    if diff > 1e-4:
        raise RuntimeError(f"zeroing channels differs from removing them by {diff}")
    return diff


def weight_scores(model: osl.Model, method: str, slices: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Per-weight scores (higher = kept) of a method."""
    w = {x.weight: np.abs(model.initializer(x.weight)).astype(np.float64) for x in model.layers}
    if method == "magnitude":
        return w
    if method == "magnitude-bnfold":
        folded = fold_bn(model)
        return {k: np.abs(folded.initializer(k)).astype(np.float64) for k in w}
    if method == "slice-then-magnitude":
        syn = slices["slice-targeted"].synapses
        return {k: (syn[k] != 0) * (1.0 + v.max()) + v for k, v in w.items()}
    if method == "slice-abs-x-magnitude":
        syn = slices["slice-targeted-abs"].synapses
        return {k: np.abs(syn[k]) * v for k, v in w.items()}
    if method == "slice-neuron":
        neurons = slices["slice-targeted"].neurons
        out = {}
        for x in model.layers:
            c = np.abs(np.asarray(neurons[x.output], np.float64))  # one sample's shape, channels first
            per = c.reshape(c.shape[0], -1).sum(1) / max(1, w[x.weight].size // w[x.weight].shape[x.out_axis])
            shape = [1] * w[x.weight].ndim
            shape[x.out_axis] = -1
            out[x.weight] = np.broadcast_to(per.reshape(shape), w[x.weight].shape).copy()
        return out
    if method == "random":
        rng = np.random.default_rng(1000 + seed)
        return {k: rng.random(v.shape) for k, v in w.items()}
    return {k: np.abs(np.asarray(v, np.float64)) for k, v in slices[method].synapses.items()}


def pruned_model(model: osl.Model, method: str, scores: dict[str, np.ndarray], r: float, scope: str) -> osl.Model:
    """``model`` with the fraction ``r`` removed per layer (``scope`` ``layer``) or per channel set."""
    if scope == "layer":
        plan = (plan_pruning(model, r, budget="uniform", mode="unstructured") if method == "magnitude" else
                plan_pruning(model, r, budget="slice", slice=scores, mode="unstructured"))
        return prune(model, plan)
    removed = {}
    for x in channel_layers(model):
        l1 = channel_scores(model, x, np.abs(model.initializer(x.weight)))
        s = channel_scores(model, x, scores[x.weight])
        removed[x.name] = np.lexsort((l1, s))[: round(r * x.out_channels)]
    return zero_channels(model, removed)


def save_results(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` as indented JSON, each record of a top-level list of records on one line, floats in
    records rounded to 5 decimals (atomic)."""
    from onnxslice.io import atomic_write_bytes

    marks = {k: f"@@{k}@@" for k, v in payload.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
    text = json.dumps({k: marks.get(k, v) for k, v in payload.items()}, indent=2, default=float)
    for k, mark in marks.items():
        lines = ",\n".join("    " + json.dumps({f: round(v, 5) if isinstance(v, float) else v for f, v in r.items()},
                                                 separators=(", ", ": "), default=float) for r in payload[k])
        text = text.replace(f'"{mark}"', "[\n" + lines + "\n  ]")
    atomic_write_bytes(path, (text + "\n").encode())


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def get_slices(model: osl.Model, name: str, train: Any, targets: list[int], seed: int, n_slice: int,
               methods: list[str], cache: Path, **options: Any) -> tuple[dict[str, Any], float]:
    """The slices the methods need, from the cache or computed (and cached); the seconds spent computing."""
    need = {m for m in methods if m in SLICE_KINDS}
    if "slice-then-magnitude" in methods or "slice-neuron" in methods:
        need.add("slice-targeted")
    if "slice-abs-x-magnitude" in methods:
        need.add("slice-targeted-abs")
    folded: osl.Model | None = None
    out: dict[str, Any] = {}
    spent = 0.0
    for kind in sorted(need):
        path = cache / "slices" / f"{tag(name, seed)}-{kind}-n{n_slice}-{digest(options)}.npz"
        if path.is_file():
            out[kind] = osl.Slice.load(path)
            continue
        t0 = time.perf_counter()
        which = "pred" if kind == "slice-all" else targets
        acc = "abs" if kind == "slice-targeted-abs" else "signed"
        if kind == "slice-targeted-bnfold":
            folded = folded or fold_bn(model)
            sl = class_slice(folded, train, which, samples=n_slice, profile_samples=1000, accumulate=acc, **options)
        else:
            sl = class_slice(model, train, which, samples=n_slice, profile_samples=1000, accumulate=acc, **options)
        spent += time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        sl.save(path)
        out[kind] = sl
    return out, spent


def run_seed(model: osl.Model, name: str, seed: int, data: dict[str, Any], cfg: dict[str, Any],
             cache: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every ratio x method x scope of one seed (from the row cache when this configuration ran)."""
    path = cache / "rows" / f"{tag(name, seed)}-{digest(cfg)}.json"
    if path.is_file():
        old = json.loads(path.read_text())
        return old["rows"], old["diagnostics"]
    test, train, calib = data["test"], data["train"], data["calib"]
    targets = target_subset(seed)
    keep = np.flatnonzero(np.isin(test.labels, targets))[: cfg["n_test"]]
    sub = test.subset(keep)
    tg = np.asarray(targets)

    def accuracy(m: osl.Model) -> dict[str, float]:
        y = run_outputs(m, sub, 256)[0]
        pred = y.argmax(1)
        return {"acc_all": float((pred == sub.labels).mean()),
                "acc_targets": float((tg[y[:, targets].argmax(1)] == sub.labels).mean()),
                "collapsed": bool(np.bincount(pred, minlength=y.shape[1]).max() >= 0.95 * len(pred))}

    slices, slice_s = get_slices(model, name, train, targets, seed, cfg["n_slice"], cfg["methods"], cache,
                                 theta=cfg["theta"], granularity=cfg["granularity"])
    diag: dict[str, Any] = {}
    if "slice-targeted" in slices and "slice-targeted-abs" in slices:
        signed, counted = slices["slice-targeted"].synapses, slices["slice-targeted-abs"].synapses
        diag = {x.name: {"in_slice": float(np.mean(counted[x.weight] != 0)),
                         "signed_over_count": float(np.abs(signed[x.weight]).sum() / max(1, counted[x.weight].sum()))}
                for x in model.layers}
    base = accuracy(model)
    has_bn = any(n.op_type == "BatchNormalization" for n in model.nodes)
    rows = []
    for method in cfg["methods"]:
        scores = weight_scores(model, method, slices, seed)
        for scope in cfg["scopes"]:
            for r in cfg["ratios"]:
                m = pruned_model(model, method, scores, r, scope)
                variants = [(method, m)]
                if r in cfg["bn"] and has_bn:
                    variants.append((f"{method}+bnrecal", recalibrate_bn(m, calib)))
                if r in cfg.get("meancomp", []) and scope == "layer":
                    variants.append((f"{method}+meancomp", mean_compensate(model, m, data["profile"])))
                for label, mm in variants:
                    rows.append({"model": name, "seed": seed, "targets": targets, "scope": scope, "ratio": r,
                                 "method": label, **accuracy(mm), "original_acc_all": base["acc_all"],
                                 "test_samples": len(sub), "slice_samples": cfg["n_slice"]})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_json(path, {"config": cfg, "rows": rows, "diagnostics": diag, "slice_seconds": slice_s})
    return rows, diag


def settings_rows(name: str, ratios: list[float], seeds: list[int]) -> list[dict[str, Any]]:
    """The magnitude baseline under several definitions of r (full test set, the seeds' target pairs)."""
    model = osl.load(zoo.path(name))
    test = osl.load_data("builtin:mnist?split=test")
    labels = np.asarray(test.labels)
    w = {x.weight: np.abs(model.initializer(x.weight)) for x in model.layers}
    names = [x.weight for x in model.layers]

    def acc(m: osl.Model) -> tuple[float, float]:
        ok = run_outputs(m, test, 256)[0].argmax(1) == labels
        per = [ok[np.isin(labels, target_subset(s))].mean() for s in seeds]
        return float(np.mean(per)), float(np.std(per))

    def masked(keep: dict[str, np.ndarray]) -> osl.Model:
        return with_initializers(model, {k: model.initializer(k) * v for k, v in keep.items()}, "masked")

    def per_layer(r: float, which: list[str]) -> dict[str, np.ndarray]:
        out = {}
        for n in which:
            m = np.ones(w[n].size, bool)
            m[np.argsort(w[n].reshape(-1), kind="stable")[: round(r * w[n].size)]] = False
            out[n] = m.reshape(w[n].shape)
        return out

    def global_(r: float, which: list[str]) -> dict[str, np.ndarray]:
        flat = np.concatenate([w[n].reshape(-1) for n in which])
        m = np.ones(flat.size, bool)
        m[np.argsort(flat, kind="stable")[: round(r * flat.size)]] = False
        out, o = {}, 0
        for n in which:
            out[n] = m[o:o + w[n].size].reshape(w[n].shape)
            o += w[n].size
        return out

    has_bn = any(n.op_type == "BatchNormalization" for n in model.nodes)
    wf = weight_scores(model, "magnitude-bnfold", {}, 0) if has_bn else w

    def variants(r: float) -> dict[str, Callable[[], osl.Model]]:
        out: dict[str, Callable[[], osl.Model]] = {
            "weights, per layer, all layers (scope layer)": partial(masked, per_layer(r, names)),
            "weights, per layer, first and last layer kept": partial(masked, per_layer(r, names[1:-1])),
            "weights, per layer, last layer kept": partial(masked, per_layer(r, names[:-1])),
            "weights, one global ranking, all layers": partial(masked, global_(r, names)),
            "weights, one global ranking, first and last kept": partial(masked, global_(r, names[1:-1])),
            "channels (L1), fraction of parameters, uniform (library structured)":
                partial(prune, model, plan_pruning(model, r, "uniform", mode="structured")),
            "channels (L1), fraction of each layer's channels, last kept (scope channel)":
                partial(pruned_model, model, "magnitude", w, r, "channel"),
        }
        if has_bn:
            out["weights of the BN-folded model, per layer, all layers"] = partial(
                pruned_model, model, "magnitude-bnfold", wf, r, "layer")
            out["channels (L1 of the BN-folded filters), fraction of each layer's channels, last kept"] = partial(
                pruned_model, model, "magnitude-bnfold", wf, r, "channel")
        return out

    rows = []
    for r in ratios:
        for label, make in variants(r).items():
            mean, std = acc(make())
            rows.append({"model": name, "ratio": r, "setting": label, "acc_all": round(mean, 4),
                         "acc_all_std": round(std, 4), "paper_magnitude": PAPER["magnitude"].get(r)})
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per model, scope, ratio and method."""
    out = []
    key = lambda r: (r["model"], r.get("scope", "layer"), r["ratio"], r["method"])  # noqa: E731
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    for k in sorted(groups):
        rs = groups[k]
        a, t = np.array([r["acc_all"] for r in rs]), np.array([r["acc_targets"] for r in rs])
        out.append({"model": k[0], "scope": k[1], "ratio": k[2], "method": k[3], "seeds": len(rs),
                    "collapsed": sum(bool(r.get("collapsed")) for r in rs),
                    "acc_all": round(float(a.mean()), 4), "acc_all_std": round(float(a.std()), 4),
                    "acc_targets": round(float(t.mean()), 4), "acc_targets_std": round(float(t.std()), 4)})
    return out


def gaps(rows: list[dict[str, Any]], baseline: str = "magnitude") -> list[dict[str, Any]]:
    """Per model, scope, ratio and slice method: its accuracy minus ``baseline``'s, paired over seeds.

    ``ci95``: half-width of the 95% t-interval of the mean difference; ``ahead``/``behind``: seeds.
    """
    from scipy.stats import t as t_dist

    out = []
    base = {(r["model"], r.get("scope", "layer"), r["ratio"], r["seed"]): r["acc_all"] for r in rows
            if r["method"] == baseline}
    for meth in sorted({r["method"] for r in rows if r["method"].startswith("slice") and "+" not in r["method"]}):
        diffs: dict[tuple[Any, ...], list[float]] = {}
        for r in rows:
            k = (r["model"], r.get("scope", "layer"), r["ratio"], r["seed"])
            if r["method"] == meth and k in base:
                diffs.setdefault(k[:3], []).append(r["acc_all"] - base[k])
        for k, d in sorted(diffs.items()):
            half = float(t_dist.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
            out.append({"model": k[0], "scope": k[1], "ratio": k[2], "method": meth, "baseline": baseline,
                        "seeds": len(d), "minus_baseline": round(float(np.mean(d)), 4),
                        "std": round(float(np.std(d)), 4), "ci95": round(half, 4),
                        "ahead": int(sum(x > 0 for x in d)), "behind": int(sum(x < 0 for x in d))})
    return out


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    """One panel per model (rows) and scope (columns; mean-compensated rows get their own column)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def panel_of(r: dict[str, Any]) -> str:
        return r["scope"] + (" + mean compensation" if r["method"].endswith("+meancomp") else "")

    colours = dict(zip(METHODS, ("tab:red", "tab:purple", "tab:green", "tab:brown", "tab:pink", "tab:cyan",
                                 "tab:olive", "tab:blue", "tab:gray", "tab:orange"), strict=True))
    models = sorted({r["model"] for r in summary})
    order = ["layer", "layer + mean compensation", "channel"]
    panels = sorted({panel_of(r) for r in summary}, key=lambda p: order.index(p) if p in order else 9)
    fig, axes = plt.subplots(len(models), len(panels), figsize=(6.2 * len(panels), 4.6 * len(models)),
                             squeeze=False)
    titles = {"layer": "fraction r of the weights per layer (unstructured)",
              "layer + mean compensation": "weights per layer, pruned inputs replaced by their mean",
              "channel": "fraction r of the channels per layer (filters)"}
    for i, model in enumerate(models):
        for j, panel in enumerate(panels):
            ax = axes[i][j]
            mine = [r for r in summary if r["model"] == model and panel_of(r) == panel]
            for method in sorted({r["method"] for r in mine}):
                rs = sorted((r for r in mine if r["method"] == method), key=lambda r: r["ratio"])
                x = [r["ratio"] for r in rs]
                y, e = np.array([r["acc_all"] for r in rs]), np.array([r["acc_all_std"] for r in rs])
                base = method.split("+")[0]
                colour = colours.get(base, "tab:gray")
                recal = method.endswith("+bnrecal")
                main = base in ("slice-targeted", "slice-all", "magnitude", "random")
                ax.plot(x, y, marker="x" if recal else "o", ms=8 if recal else 4, label=method, color=colour,
                        ls="none" if recal and len(x) == 1 else "--" if recal else "-" if main else ":",
                        lw=2 if main else 1.2)
                if main and not recal:
                    ax.fill_between(x, y - e, y + e, alpha=0.1, color=colour)
            for meth, pts in PAPER.items():
                ax.scatter(list(pts), list(pts.values()), marker="*", s=120, color=colours[meth], edgecolor="k",
                           zorder=5, label=f"paper: {meth}")
            ax.set_title(f"{model}: {titles.get(panel, panel)}", fontsize=9)
            ax.set_xlabel("pruning ratio r")
            ax.set_ylabel("accuracy on the target classes")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=5.5, ncol=2)
    fig.suptitle("NNSlicer class-focused pruning (mean +- std over 2-class target subsets; no fine-tuning)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=75, format="png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="10 seeds, 200/100 slice samples, every test sample "
                    "(default: the quick run, 3 seeds, 50 slice samples, 500 test samples per subset)")
    ap.add_argument("--seeds", type=int, help="number of target subsets (default 3, 10 with --full)")
    ap.add_argument("--first-seed", type=int, default=0, help="first seed (default 0), to split seeds over runs")
    ap.add_argument("--merge", action="append", default=[],
                    help="rows of another run's JSON to merge in (e.g. other seeds; default none)")
    ap.add_argument("--model", action="append", default=[], help="lenet5 and/or resnet8_mnist (default both)")
    ap.add_argument("--ratios", help="comma list of ratios (default 0.2,0.4,0.55; --full: 0.1-0.6 in steps of 0.1, "
                    "and 0.55)")
    ap.add_argument("--scope", default="layer,channel",
                    help="comma list of scopes: layer (fraction of each layer's weights) and/or channel (fraction "
                         "of each non-output layer's channels) (default both)")
    ap.add_argument("--bn-recalibrate", default="",
                    help="comma list of ratios at which every method is also measured after re-estimating the "
                         "BatchNormalization statistics (default none)")
    ap.add_argument("--mean-compensate", default="",
                    help="comma list of ratios at which every method is also measured (scope layer) with each pruned "
                         "synapse's input replaced by its profiled mean, folded into the bias (default none)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list (default all)")
    ap.add_argument("--theta", type=float, default=0.3, help="NNSlicer's theta for every slice (default 0.3)")
    ap.add_argument("--granularity", choices=("element", "channel"), default="element",
                    help="slice granularity (default element)")
    ap.add_argument("--slice-samples", type=int,
                    help="criterion samples per slice (default 50; --full: 200 on LeNet-5, 100 on ResNet-8)")
    ap.add_argument("--settings", action="store_true",
                    help="measure only the magnitude baseline under several definitions of r (default off)")
    ap.add_argument("--cache", default=str(ROOT / "out" / "classprune-cache"),
                    help="slices and per-seed rows, for resuming (default out/classprune-cache)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "classprune.json"),
                    help="JSON results (default benchmarks/results/classprune.json; the PNG goes beside it)")
    args = ap.parse_args()
    n_seeds = args.seeds if args.seeds is not None else (10 if args.full else 3)
    seeds = list(range(args.first_seed, args.first_seed + n_seeds))
    ratios = [float(r) for r in (args.ratios or ("0.1,0.2,0.3,0.4,0.5,0.55,0.6" if args.full else "0.2,0.4,0.55"))
              .split(",")]
    models = args.model or list(MODELS)
    out = Path(args.out)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    command = "python " + " ".join(["benchmarks/bench_classprune.py", *sys.argv[1:]])
    old = json.loads(out.read_text()) if out.is_file() else {}
    if args.settings:
        settings = [r for name in models for r in settings_rows(name, ratios, seeds)]
        print(format_table(settings, title="magnitude baseline under several definitions of r (acc_all)"))
        old["settings"] = [r for r in old.get("settings", []) if r["model"] not in models] + settings
        old["settings_command"] = command
        save_results(out, old)
        print(f"saved {out}")
        return
    methods = args.methods.split(",")
    scopes = args.scope.split(",")
    bad = [m for m in methods if m not in METHODS] + [s for s in scopes if s not in SCOPES]
    if bad:
        ap.error(f"unknown method or scope: {', '.join(bad)}")
    train = osl.load_data("builtin:mnist?split=train")
    test = osl.load_data("builtin:mnist?split=test")
    cache = Path(args.cache)
    rows: list[dict[str, Any]] = []
    diag: dict[str, Any] = {}
    jobs = [(name, s) for name in models for s in seeds]
    done = 0
    checks: dict[str, float] = {}
    for name in models:
        model = osl.load(zoo.path(name))
        data: dict[str, Any] = {"test": test, "train": train, "calib": train.subset(slice(0, 256)).bind(model)}
        if "channel" in scopes and name == "lenet5":
            checks[name] = check_channel_zeroing(model, test.subset(slice(0, 256)))
        if "slice-targeted-bnfold" in methods and any(n.op_type == "BatchNormalization" for n in model.nodes):
            sample = test.subset(slice(0, 256))
            checks[f"{name}/bnfold"] = float(np.abs(run_outputs(fold_bn(model), sample)[0]
                                                    - run_outputs(model, sample)[0]).max())
            if checks[f"{name}/bnfold"] > 1e-3:
                raise RuntimeError(f"folding BN changed {name}'s outputs by {checks[f'{name}/bnfold']}")
        n_slice = args.slice_samples or ((200 if name == "lenet5" else 100) if args.full else 50)
        has_bn = any(n.op_type == "BatchNormalization" for n in model.nodes)
        # without BN these are slice-targeted and magnitude
        mine = [m for m in methods if has_bn or m not in ("slice-targeted-bnfold", "magnitude-bnfold")]
        cfg = {"rows_version": ROWS_VERSION, "n_slice": n_slice, "n_test": None if args.full else 500,
               "theta": args.theta,
               "granularity": args.granularity, "methods": mine, "scopes": scopes, "ratios": ratios,
               "bn": [float(x) for x in args.bn_recalibrate.split(",") if x],
               "meancomp": [float(x) for x in args.mean_compensate.split(",") if x]}
        if cfg["meancomp"]:
            data["profile"] = osl.profile(model, train.subset(slice(0, 1000)), 256, show_progress=False)
            checks[f"{name}/meancomp"] = check_mean_compensation(model, data["profile"], data["calib"])
        for seed in seeds:
            ts = time.perf_counter()
            seed_rows, d = run_seed(model, name, seed, data, cfg, cache)
            rows += seed_rows
            diag[f"{name}/seed{seed}"] = d
            done += 1
            el = time.perf_counter() - t0
            at = {(x["scope"], x["method"]): x["acc_all"] for x in seed_rows if x["ratio"] == 0.55}
            print(f"[{done}/{len(jobs)}] {name} seed {seed} {target_subset(seed)}: {time.perf_counter() - ts:.0f} s, "
                  f"elapsed {el:.0f} s, ETA {el / done * (len(jobs) - done):.0f} s | r=0.55 "
                  + " ".join(f"{s[0][0]}:{s[1]} {v:.3f}" for s, v in at.items() if "+" not in s[1]), flush=True)
    # keep the rows of earlier runs (other models, methods, scopes or seeds) that this run did not redo
    commands: list[str] = []
    per_seed: dict[str, Any] = {}
    for src in [out, *map(Path, args.merge)]:
        if src.is_file():
            prev = json.loads(src.read_text())
            commands += prev.get("commands", [prev.get("command", "")])
            redone = {(r["model"], r["scope"], r["method"], r["seed"]) for r in rows}
            rows = [r for r in prev.get("rows", []) if (r["model"], r.get("scope", "layer"), r["method"], r["seed"])
                    not in redone] + rows
            diag = {**prev.get("slice_diagnostics", {}), **diag}
            checks = {**prev.get("checks", {}), **checks}
            per_seed.update(prev.get("per_seed", {}))
    for row in rows:
        row.setdefault("scope", "layer")
    summary = summarise(rows)
    print(format_table([{k: v for k, v in s.items() if not k.endswith("_std")} for s in summary
                        if s["ratio"] in (0.2, 0.55)],
                       title="class-focused pruning: accuracy on the target classes (mean over seeds)"))
    gap = gaps(rows, "magnitude") + gaps(rows, "magnitude-bnfold")
    print(format_table([g for g in gap if g["ratio"] == 0.55], title="slice methods minus magnitude at r = 0.55"))
    payload = {"command": command, "commands": list(dict.fromkeys([*commands, command])),
               "machine": {"cpus": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                           "note": "2 cores shared by 5 concurrent sessions"},
               "theta": args.theta, "granularity": args.granularity, "checks": checks,
               "seeds": sorted({r["seed"] for r in rows}),
               "targets": {s: target_subset(s) for s in sorted({r["seed"] for r in rows})},
               "ratios": sorted({r["ratio"] for r in rows}), "paper": {m: {str(k): v for k, v in p.items()}
                                                                       for m, p in PAPER.items()},
               "summary": summary, "minus_magnitude": gap,
               "per_seed": {**per_seed, **{f"{r['model']}/seed{r['seed']}": {
                   "targets": target_subset(r["seed"]), "original_acc_all": r["original_acc_all"],
                   "test_samples": r["test_samples"], "slice_samples": r["slice_samples"]}
                   for r in rows if "test_samples" in r}},
               "rows": [{k: v for k, v in r.items()
                         if k not in ("targets", "original_acc_all", "test_samples", "slice_samples")} for r in rows],
               "slice_diagnostics": diag,
               "settings": old.get("settings", []), "settings_command": old.get("settings_command", ""),
               "seconds": round(time.perf_counter() - t0, 1)}
    save_results(out, payload)
    plot(summary, out.with_suffix(".png"))
    print(f"saved {out} and {out.with_suffix('.png')} ({payload['seconds']} s)")


if __name__ == "__main__":
    main()

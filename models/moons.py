"""The SAfER synthetic benchmark models (section 3.1): four families trained on ``builtin:moons``.

Families (depth = number of blocks, uniform in [2, 6]; widths uniform in [8, 128]):

- ``vanilla``: a sequential MLP ``Linear -> ReLU`` x depth, then a 2-way ``Linear`` head; every hidden
  layer has its own width.
- ``skip``: ``Linear(2, w)`` stem, ``depth`` residual blocks ``x + relu(Linear(w, w)(x))`` (one layer per
  block: the residual stream keeps one width ``w``), a 2-way head.
- ``skip+sd``: the same architecture trained with stochastic depth (Huang et al. 2016): block ``i`` of
  ``d`` survives with probability ``1 - 0.5 * (i + 1) / d`` during training; at inference its residual
  branch is scaled by that probability (a ``Mul`` by a constant in the graph).
- ``transformer``: the 2-D point is embedded as 4 tokens of width ``w`` (``Linear(2, 4 w)`` and a
  reshape), then ``depth`` pre-LayerNorm blocks ``x + Attn(LN(x))`` and ``x + MLP(LN(x))`` (single-head
  attention with separate q/k/v/out projections, MLP hidden width uniform in [8, 128]), mean over
  tokens, a 2-way head.

Training: Adam, lr 0.01, 6 epochs, batch 32, on ``builtin:moons?split=train`` (1,500 points); a model is
kept when it reaches at least ``MIN_ACCURACY`` on ``split=test`` (the paper's "approximately 100%").
Exported with torch's TorchScript exporter (opset 17, IR <= 10, dynamic batch axis named ``N``).

Run ``python models/moons.py --per-family 3 --out models/moons`` to rebuild the committed set (seeded:
model ``k`` of a family uses seed ``1000 * family_index + k`` and retries with the next free seed until it
is accurate enough). Nothing here downloads.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

FAMILIES = ("vanilla", "skip", "skip+sd", "transformer")
MIN_ACCURACY = 0.99
EPOCHS = 6
LR = 0.01
BATCH = 32
TOKENS = 4
OPSET = 17
IR_VERSION = 10


@dataclass
class MoonsSpec:
    """Architecture and training record of one benchmark model."""

    family: str
    seed: int
    depth: int
    widths: list[int]
    accuracy: float = 0.0
    attempts: int = 1

    @property
    def name(self) -> str:
        """File stem, e.g. ``vanilla-1000``; ``skip+sd`` is spelled ``skipsd``."""
        return f"{self.family.replace('+', '')}-{self.seed}"


def file_name(family: str, seed: int) -> str:
    """The ``.onnx`` file name of a model."""
    return f"{family.replace('+', '')}-{seed}.onnx"


def _sample_spec(family: str, seed: int) -> MoonsSpec:
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(2, 7))
    if family == "vanilla":
        widths = [int(w) for w in rng.integers(8, 129, size=depth)]
    elif family in ("skip", "skip+sd"):
        widths = [int(rng.integers(8, 129))]
    elif family == "transformer":
        # token width must stay small enough for 4 tokens; MLP hidden widths per block
        widths = [int(rng.integers(1, 17)) * 8, *(int(w) for w in rng.integers(8, 129, size=depth))]
    else:
        raise ValueError(f"unknown family '{family}'; use one of {', '.join(FAMILIES)}")
    return MoonsSpec(family, seed, depth, widths)


def _build(spec: MoonsSpec) -> Any:
    import torch
    from torch import nn

    class Vanilla(nn.Module):
        def __init__(self, widths: list[int]) -> None:
            super().__init__()
            dims = [2, *widths]
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(dims))
            self.head = nn.Linear(dims[-1], 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.hidden:
                x = torch.relu(layer(x))
            return self.head(x)

    class Skip(nn.Module):
        def __init__(self, width: int, depth: int, stochastic: bool) -> None:
            super().__init__()
            self.stem = nn.Linear(2, width)
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
            self.survive = [1.0 - 0.5 * (i + 1) / depth for i in range(depth)] if stochastic else [1.0] * depth
            self.head = nn.Linear(width, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            for block, p in zip(self.blocks, self.survive, strict=True):
                branch = torch.relu(block(x))
                if p == 1.0:
                    x = x + branch
                elif self.training:
                    if bool(torch.rand(()) < p):
                        x = x + branch
                else:
                    x = x + p * branch
            return self.head(x)

    class Block(nn.Module):
        def __init__(self, width: int, hidden: int) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(width)
            self.q = nn.Linear(width, width)
            self.k = nn.Linear(width, width)
            self.v = nn.Linear(width, width)
            self.o = nn.Linear(width, width)
            self.ln2 = nn.LayerNorm(width)
            self.fc1 = nn.Linear(width, hidden)
            self.fc2 = nn.Linear(hidden, width)
            self.scale = 1.0 / float(np.sqrt(width))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.ln1(x)
            att = torch.softmax(torch.matmul(self.q(h), self.k(h).transpose(1, 2)) * self.scale, dim=-1)
            x = x + self.o(torch.matmul(att, self.v(h)))
            return x + self.fc2(torch.relu(self.fc1(self.ln2(x))))

    class Transformer(nn.Module):
        def __init__(self, width: int, hiddens: list[int]) -> None:
            super().__init__()
            self.width = width
            self.embed = nn.Linear(2, TOKENS * width)
            self.blocks = nn.ModuleList(Block(width, h) for h in hiddens)
            self.head = nn.Linear(width, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.embed(x).reshape(-1, TOKENS, self.width)
            for block in self.blocks:
                t = block(t)
            return self.head(t.mean(dim=1))

    if spec.family == "vanilla":
        return Vanilla(spec.widths)
    if spec.family in ("skip", "skip+sd"):
        return Skip(spec.widths[0], spec.depth, spec.family == "skip+sd")
    return Transformer(spec.widths[0], spec.widths[1:])


def _moons(split: str) -> tuple[np.ndarray, np.ndarray]:
    from onnxslice.data import load_data

    ds = load_data(f"builtin:moons?split={split}")
    assert ds.labels is not None
    return ds.x, ds.labels


def train(spec: MoonsSpec) -> tuple[Any, float]:
    """Train one model (Adam, lr 0.01, 6 epochs); returns the module and its test accuracy."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(spec.seed)
    net = _build(spec)
    x, y = _moons("train")
    xt, yt = _moons("test")
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    gen = np.random.default_rng(spec.seed)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(EPOCHS):
        net.train()
        perm = gen.permutation(len(x))
        for s in range(0, len(x), BATCH):
            idx = torch.from_numpy(perm[s : s + BATCH])
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xs[idx]), ys[idx])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean())
    return net, acc


def export(net: Any, spec: MoonsSpec) -> bytes:
    """Export to ONNX bytes: input ``x`` float32[N,2], output ``logits`` float32[N,2]; IR <= 10."""
    import onnx
    import torch

    buf = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.zeros(3, 2),),
        buf,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        dynamo=False,
    )
    proto = onnx.load_from_string(buf.getvalue())
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    proto.producer_name = "onnxslice-models-moons"
    meta = proto.metadata_props.add()
    meta.key, meta.value = "onnxslice.moons", json.dumps(asdict(spec))
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def build_model(family: str, index: int, max_attempts: int = 20) -> tuple[MoonsSpec, bytes]:
    """Train model ``index`` of ``family`` until it reaches ``MIN_ACCURACY`` (next seed on failure).

    Raises:
        RuntimeError: no seed within ``max_attempts`` reached the accuracy.
    """
    base = 1000 * FAMILIES.index(family) + 1000 + 37 * index
    for attempt in range(max_attempts):
        spec = _sample_spec(family, base + attempt)
        net, acc = train(spec)
        if acc >= MIN_ACCURACY:
            spec.accuracy, spec.attempts = acc, attempt + 1
            return spec, export(net, spec)
    raise RuntimeError(f"no {family} model reached {MIN_ACCURACY:.0%} test accuracy in {max_attempts} attempts")


def read_spec(path: str | Path) -> dict[str, Any]:
    """The architecture record stored in a model's metadata (family, seed, depth, widths, accuracy)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for p in proto.metadata_props:
        if p.key == "onnxslice.moons":
            return dict(json.loads(p.value))
    raise ValueError(f"'{path}' is not an onnxslice moons model")


def ensure(out: str | Path, per_family: int, families: tuple[str, ...] = FAMILIES) -> dict[str, list[Path]]:
    """Make sure ``out`` holds ``per_family`` models of each family (training the missing ones).

    Models are found by their index-derived seed range, so committed and generated files are reused.
    """
    from onnxslice.io import atomic_write_bytes

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[Path]] = {}
    for family in families:
        paths: list[Path] = []
        for k in range(per_family):
            base = 1000 * FAMILIES.index(family) + 1000 + 37 * k
            hit = next((root / file_name(family, s) for s in range(base, base + 20)
                        if (root / file_name(family, s)).is_file()), None)
            if hit is None:
                spec, data = build_model(family, k)
                hit = atomic_write_bytes(root / file_name(family, spec.seed), data)
                print(f"built {hit.name}: depth {spec.depth}, widths {spec.widths}, test acc {spec.accuracy:.3f}",
                      file=sys.stderr)
            paths.append(hit)
        found[family] = paths
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-family", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "moons"))
    p.add_argument("--families", default=",".join(FAMILIES))
    a = p.parse_args(argv)
    ensure(a.out, a.per_family, tuple(a.families.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

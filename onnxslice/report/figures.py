"""Plotly figures of the report's sections (data in, figures out; nothing computed, nothing written).

plotly was chosen over matplotlib because the page is for looking *into* a model: hovering a bar shows
the layer, its op and the exact score, and zooming a Pareto curve separates close plans. Its JavaScript
is inlined once in the page, so the file works offline.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

__all__ = ["agreement_figure", "pareto_figure", "sensitivity_figure", "slice_figure", "strip_figure"]

_LAYOUT: dict[str, Any] = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 50, "b": 60},
                           "legend": {"orientation": "h", "y": -0.25}, "height": 420}


def sensitivity_figure(sec: dict[str, Any]) -> go.Figure:
    """Per-layer importance by each criterion (normalised to its maximum), the oracle as a line."""
    fig = go.Figure()
    hover = [f"{op}, {p:,} params" for op, p in zip(sec["ops"], sec["params"], strict=True)]
    for name, c in sec["criteria"].items():
        fig.add_bar(x=sec["layers"], y=c["normalised"], name=name, customdata=hover,
                    hovertemplate="%{x} (%{customdata})<br>" + name + ": %{y:.3f}<extra></extra>")
    if sec.get("oracle"):
        fig.add_scatter(x=sec["layers"], y=sec["oracle"]["normalised"], name="oracle (measured)",
                        mode="lines+markers", line={"color": "black", "width": 3})
    fig.update_layout(title="Layer importance by criterion (each normalised to its largest layer)",
                      barmode="group", yaxis_title="importance / max", **_LAYOUT)
    return fig


def strip_figure(sec: dict[str, Any]) -> go.Figure:
    """The layers in graph order as a strip, coloured by importance, one row per criterion."""
    rows = list(sec["criteria"].items())
    if sec.get("oracle"):
        rows.append(("oracle", sec["oracle"]))
    fig = go.Figure(go.Heatmap(z=[c["normalised"] for _, c in rows], x=sec["layers"], y=[n for n, _ in rows],
                               colorscale="Viridis", zmin=0, zmax=1, colorbar={"title": "importance"}))
    layout = dict(_LAYOUT, height=max(220, 60 + 40 * len(rows)))
    fig.update_layout(title="Layer strip (graph order, input to output)", **layout)
    return fig


def agreement_figure(sec: dict[str, Any]) -> go.Figure:
    """Spearman of each criterion with the oracle, with its 95% bootstrap interval."""
    rows = sec["rows"]
    fig = go.Figure(go.Bar(
        x=[r["criterion"] for r in rows], y=[r["spearman"] for r in rows],
        error_y={"type": "data", "symmetric": False,
                 "array": [r["spearman_hi"] - r["spearman"] for r in rows],
                 "arrayminus": [r["spearman"] - r["spearman_lo"] for r in rows]},
        hovertemplate="%{x}: Spearman %{y:.3f}<extra></extra>"))
    fig.update_layout(title="Agreement with the measured oracle (Spearman, 95% interval over layers)",
                      yaxis={"range": [-1, 1], "title": "Spearman"}, **_LAYOUT)
    return fig


def slice_figure(sec: dict[str, Any]) -> go.Figure:
    """Share of each layer's synapses (top) and neurons (bottom) in each class's slice."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("synapses in the slice", "neurons in the slice"))
    palette = qualitative.Plotly
    for i, c in enumerate(sec["classes"]):
        style = {"name": f"class {c['class']}", "legendgroup": str(c["class"]),
                 "marker_color": palette[i % len(palette)]}
        fig.add_bar(x=sec["layers"], y=c["synapses_in"], row=1, col=1, **style)
        fig.add_bar(x=sec["layers"], y=c["neurons_in"], showlegend=False, row=2, col=1, **style)
    layout = dict(_LAYOUT, height=560)
    fig.update_layout(title=f"Where each class's slice runs (theta {sec.get('theta')})", barmode="group", **layout)
    fig.update_yaxes(range=[0, 1], tickformat=".0%")
    return fig


def pareto_figure(sec: dict[str, Any], what: str) -> go.Figure:
    """Fidelity against file size and against measured latency, one trace per plan family."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=("fidelity vs file size", "fidelity vs measured latency"))
    metric = "accuracy" if sec["rows"] and sec["rows"][0]["accuracy"] is not None else "top1_agreement"
    ref = sec["original"]["accuracy"] if metric == "accuracy" else 1.0
    families: dict[str, list[dict[str, Any]]] = {}
    for r in sec["rows"]:
        families.setdefault(r["plan"], []).append(r)
    for name, rows in families.items():
        rows = sorted(rows, key=lambda r: r["size_ratio"])
        text = [f"{name} @ {r['budget']}" for r in rows]
        for col, x in ((1, "size_ratio"), (2, "latency_ratio")):
            fig.add_scatter(x=[r[x] for r in rows], y=[r[metric] for r in rows], mode="lines+markers", name=name,
                            text=text, legendgroup=name, showlegend=col == 1, row=1, col=col,
                            hovertemplate="%{text}<br>x %{x:.3f}<br>" + metric + " %{y:.4f}<extra></extra>")
    for col in (1, 2):
        fig.add_scatter(x=[1.0], y=[ref], mode="markers", marker={"symbol": "star", "size": 14, "color": "black"},
                        name="original", showlegend=col == 1, row=1, col=col)
    fig.update_xaxes(title_text="size / original", row=1, col=1)
    fig.update_xaxes(title_text="latency / original (batch 1, 1 thread)", row=1, col=2)
    fig.update_yaxes(title_text=metric.replace("_", " "), row=1, col=1)
    fig.update_layout(title=f"{what}: what each budget costs and buys", **_LAYOUT)
    return fig

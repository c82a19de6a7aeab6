"""Render the report's sections and figures into one self-contained HTML page (Jinja2 + inlined plotly.js)."""

from __future__ import annotations

from importlib import resources
from typing import Any

import jinja2
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

__all__ = ["render"]


def _div(fig: go.Figure | None, key: str) -> str:
    if fig is None:
        return ""
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{key}",
                           config={"displaylogo": False, "responsive": True}))


def render(context: dict[str, Any], figures: dict[str, go.Figure | None]) -> str:
    """The page: ``context`` feeds the template, ``figures`` become inline plot divs (plotly.js inlined once)."""
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(resources.files("onnxslice.report").joinpath("template.html.j2").read_text("utf-8"))
    plots = {k: _div(f, k) for k, f in figures.items()}
    return template.render(plotly_js=get_plotlyjs(), plots=plots, **context)

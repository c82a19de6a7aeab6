"""The report in a real browser: headless Chromium loads the page with no console message, every plot is
drawn (plotly's SVG and its traces exist in the rendered DOM), and a screenshot is saved."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from onnxslice.cli import main

REPO = Path(__file__).resolve().parents[2]
PLOTS = ("agreement", "sensitivity", "strip", "slices", "prune", "quantize")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(browser: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000"]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.slow
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here: install Debian's 'chromium' package (.ci/run does, as root)")
    page = tmp_path / "lenet5.html"
    argv = ["report", str(REPO / "models" / "lenet5.onnx"), "--data", "builtin:mnist?n=120", "--out", str(page),
            "--samples", "48", "--gt-draws", "2", "--ratios", "0.3", "--avg-bits", "6", "--repeats", "3",
            "--slice-samples", "2", "--classes", "0,1", "--criteria", "weight,wgrad"]
    assert main(argv) == 0
    url = page.resolve().as_uri()

    dom = _run(browser, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], f"the page logged to the console: {console}"
    for key in PLOTS:
        start = dom.stdout.find(f'id="plot-{key}"')
        assert start >= 0, f"plot {key} missing from the rendered page"
        nxt = min([i for i in (dom.stdout.find('id="plot-', start + 10),) if i > 0] or [len(dom.stdout)])
        div = dom.stdout[start:nxt]
        assert "main-svg" in div, f"plot {key} was not drawn"
        assert re.search(r'class="(trace|hm|heatmaplayer)', div), f"plot {key} has no data drawn"

    shot = tmp_path / "report.png"
    res = _run(browser, "--window-size=1280,3000", f"--screenshot={shot}", url)
    assert res.returncode == 0 and shot.stat().st_size > 50_000  # a drawn page, not a blank one
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""report.html renders in headless Chromium from disk: a non-blank screenshot with the figures
drawn, and a DOM whose every image is an embedded, decodable PNG."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchbox.report import Report, write_report
from tests.test_report import PNG, make_run

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary on PATH (Debian: apt-get install chromium); "
    "the report's rendering is not checked",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    return write_report(make_run(tmp_path_factory.mktemp("html")))


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'profile'}",  # never share a profile with another browser
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_screenshot_is_not_blank_and_shows_the_figures(report: Report, tmp_path: Path) -> None:
    import matplotlib.image

    shot = tmp_path / "report.png"
    res = _chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", report.html.as_uri()
    )
    assert shot.exists(), f"no screenshot: {res.stderr[-2000:]}"
    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (3000, 1400)
    not_white = (img < 0.95).any(axis=-1).mean()
    colourful = (img.max(axis=-1) - img.min(axis=-1) > 0.3).mean()
    assert not_white > 0.03, f"screenshot nearly blank ({not_white:.1%} non-white pixels)"
    # Text and tables are grey; coloured pixels come from the drawn figures (bars, curves).
    assert colourful > 0.005, f"no figure visible ({colourful:.2%} coloured pixels)"


def test_dom_has_every_image_embedded_and_decodable(report: Report, tmp_path: Path) -> None:
    import matplotlib.image

    res = _chromium(tmp_path, "--dump-dom", report.html.as_uri())
    dom = res.stdout
    assert "<h1>benchbox report: tiny_report" in dom, res.stderr[-2000:]
    srcs = re.findall(r"<img [^>]*src=\"([^\"]*)\"", dom)
    assert len(srcs) == len([p for p in report.figures if p.suffix == ".png"]) > 0
    for src in srcs:
        assert src.startswith("data:image/png;base64,"), src[:80]
        data = base64.b64decode(src.split(",", 1)[1])
        assert data[:8] == PNG
        pixels = matplotlib.image.imread(io.BytesIO(data))
        assert pixels.size > 0 and np.isfinite(pixels).all()
    for table in ("Mean ± 95% CI", "Mean ranks", "Friedman tests", "Paired Wilcoxon"):
        assert table in dom

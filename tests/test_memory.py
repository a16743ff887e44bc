"""Batches are streamed: a run's peak RSS grows by < 10% when the dataset size doubles.

Each run happens in its own interpreter, which reports its peak resident set size (``VmHWM`` of
``/proc/self/status``, KiB) after ``run_suite`` returns. Not ``getrusage().ru_maxrss``: Linux
keeps that across ``execve``, so a child spawned by a large pytest process reports the parent's
peak (1.5 GiB in a full CI run) instead of its own. The dataset is
``tests.fakes:TinyData`` (samples made per index, never held as a whole) with 64×64 images; the
model is the fakes' fixed-initialization net (no training, whose own memory would not be the
runner's); two methods, a localization, a faithfulness and a curve metric.

The test can see a leak: a runner that kept each job's images and attributions would hold
``n × 64 × 64 × 4 B × 2`` more at 2n samples, several times the 10% allowance (checked below).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes import tiny_suite

ROOT = Path(__file__).parents[1]
N = 2048
SIZE = 64

CHILD = """
import json, sys
from pathlib import Path
from benchbox.runner import run_suite
from benchbox.suite import parse_suite
res = run_suite(parse_suite(json.loads(sys.argv[1])), output=Path(sys.argv[2]), cache=False)
rows = len(res.scores)
status = Path("/proc/self/status").read_text().splitlines()
peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_kib": peak, "rows": rows}))
"""


def _peak(n: int, out: Path) -> dict[str, int]:
    suite = tiny_suite(
        name=f"memory{n}",
        batch_size=64,
        datasets=[{"tests.fakes:TinyData": {"n": n, "size": SIZE}}],
        methods=["tests.fakes:Grad", "saliency"],
        metrics=["pointing_game", {"deletion": {"steps": 8}}, "tests.fakes:TwoWay"],
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(suite), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_rss_is_flat_when_the_dataset_doubles(tmp_path: Path) -> None:
    small, large = _peak(N, tmp_path), _peak(2 * N, tmp_path)
    assert large["rows"] == 2 * small["rows"] == 2 * 2 * 4 * N  # 2 methods × 4 outputs
    growth = large["peak_kib"] / small["peak_kib"] - 1
    held = N * SIZE * SIZE * 4 * 2 / 1024  # KiB a non-streaming runner would add (x + maps)
    assert held > 0.10 * small["peak_kib"]  # the test could see such a leak
    print(f"peak RSS {small['peak_kib']} KiB at n={N}, {large['peak_kib']} KiB at n={2 * N}")
    assert growth < 0.10, f"peak RSS grew {growth:.1%} from n={N} to n={2 * N}"

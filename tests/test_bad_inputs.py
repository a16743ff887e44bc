"""The bad-input corpus: every mistake a user can make gets one clear line and the right exit code.

Each case writes a suite (and any files it names) into a temporary folder, runs the command line
in this process (``benchbox.cli.main``, as the console script does) and asserts the exit code, that
stderr holds exactly one ``error:`` line with the expected text (``SuiteError`` lists each problem
on its own indented line after the head line), and that no traceback was printed. Exit codes, as
the README documents them: 0 ok, 1 a job failed, 2 a usage or input error.

Every case also checks that a mistake never costs results already computed: good runs are made
once per module (the ``earlier`` fixture), each case writes its own output under the same
results root, and afterwards every file of the earlier run is byte-identical and (exit 2) no new
run folder exists. A case that fails at run time (exit 1, ``rows``) asserts the message of the
new run's error rows instead.

A case that the runner must *record* rather than refuse (NaN in the data, the model's outputs or
the attributions; an empty mask; an all-zero map) is asserted on the stored rows instead: the run
completes, the row says ``status="error"`` or a NaN value, and ``message`` gives the reason.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import Tensor

from benchbox.core import Batch, ExplainedModel
from tests.fakes import Grad, TinyData, TinyModel, tiny_suite

# -- running the command line in-process -------------------------------------------------------


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("error:")]


def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> Outcome:
    from benchbox.cli import main

    monkeypatch.setattr(sys, "argv", ["benchbox", *args])
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at the terminal width: keep lines whole
    with pytest.raises(SystemExit) as exc:
        main()
    captured = capsys.readouterr()
    code = exc.value.code
    return Outcome(code if isinstance(code, int) else 0, captured.out, captured.err)


# -- an earlier good run, which no bad input may touch ------------------------------------------


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


def _run_dirs(root: Path) -> set[Path]:
    return {p for p in root.glob("*/*") if p.is_dir()}


@dataclass
class Earlier:
    """The results root every case writes under, and the good runs already in it."""

    root: Path
    run: Path  # a finished run of tiny_suite()
    other: Path  # a finished run of another suite (name: other)
    snapshot: dict[str, bytes]


def _cli_run(*args: str) -> int:
    from benchbox.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["benchbox", *args])
        with pytest.raises(SystemExit) as exc:
            main()
    code = exc.value.code
    return code if isinstance(code, int) else 0


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Earlier:
    """Good runs made once per module; each case puts its own output under the same root."""
    base = tmp_path_factory.mktemp("earlier")
    root = base / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHBOX_CACHE", str(base / "cache"))
        for name, suite in (
            ("tiny", tiny_suite(output=str(root))),
            ("other", tiny_suite(name="other", methods=["tests.fakes:Grad"], output=str(root))),
        ):
            path = base / f"{name}.yaml"
            path.write_text(yaml.safe_dump(suite, sort_keys=False))
            assert _cli_run("run", str(path)) == 0
    (run,) = (root / "tiny").iterdir()
    (other,) = (root / "other").iterdir()
    return Earlier(root, run, other, _snapshot(run))


# -- the corpus ----------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a case's command line may name: its folder, its suite file, the earlier runs."""

    tmp: Path
    suite: Path
    earlier: Earlier


@dataclass
class Case:
    """``suite``: the YAML text (``{tmp}`` is replaced by the case's folder) or a dict
    (overrides of ``tiny_suite``); ``files``: extra files to create first; ``command``:
    ``validate`` or ``run`` (``argv`` gives the whole command line instead); ``expected``: a
    substring of the error output, or with ``rows`` (exit 1: a run-time failure) of the
    messages of the new run's error rows; ``starts``: what the error line starts with
    (default: the suite file). Python files a case writes into its folder are importable."""

    id: str
    suite: str | dict[str, Any] | bytes | None
    expected: str
    command: str = "validate"
    code: int = 2
    files: Callable[[Path], None] | None = None
    extra_args: tuple[str, ...] = ()
    problems: int = field(default=1)
    argv: Callable[[Ctx], list[str]] | None = None
    starts: Callable[[Ctx], str] | None = None
    rows: bool = False
    after: Callable[[Path], None] | None = None  # more checks, given the case's folder
    fast: bool = False  # refused in well under a second (alias bombs, deep nesting)


_BASE = (
    "name: x\n"
    "datasets: [synthetic_lesions_2d]\n"
    "models: [cnn_gap]\n"
    "methods: [saliency]\n"
    "metrics: [sparseness]\n"
)
# "Billion laughs": nine levels of nine aliases each; the file is 1 KiB, its expansion 10^9.
_LAUGHS = '&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'
_BOMB = (
    "bomb:\n  - "
    + _LAUGHS
    + "\n"
    + "".join(f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))
)


def _bombed(suite: str) -> str:
    """``suite`` after the bomb's anchors (under an unknown field, refused long before)."""
    return _BOMB.replace("bomb:", "anchors:") + suite


def _filled(value: Any, tmp: Path) -> Any:
    """``value`` with ``{tmp}`` in every string replaced by the case's folder."""
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, list):
        return [_filled(v, tmp) for v in value]
    if isinstance(value, dict):
        return {k: _filled(v, tmp) for k, v in value.items()}
    return value


def _user_model(module: str = "tests.fakes:_Net", **params: Any) -> dict[str, Any]:
    """Overrides of tiny_suite: one user_model (tests.fakes:_Net fits TinyData)."""
    return {"models": [{"user_model": {"module": module, **params}}]}


def _state(**changes: Any) -> dict[str, Tensor]:
    """_Net's state_dict with ``changes`` (name -> tensor) applied."""
    from tests.fakes import _Net

    return {**_Net().state_dict(), **changes}


def _saved(name: str, make: Callable[[Path], Any]) -> Callable[[Path], None]:
    """Write ``make(tmp)`` to tmp/name: bytes as they are, else with torch.save."""

    def files(tmp: Path) -> None:
        obj = make(tmp)
        if isinstance(obj, bytes):
            (tmp / name).write_bytes(obj)
        else:
            torch.save(obj, tmp / name)

    return files


class _Payload:
    """A pickle that would create ``marker`` when unpickled (it must never be)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {self.marker}",))


def _no_payload_ran(tmp: Path) -> None:
    assert not (tmp / "pwned").exists(), "the pickle's payload ran"


def _torchscript(tmp: Path) -> None:
    import warnings

    from tests.fakes import _Net

    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_Net()), tmp / "net.pt")


def _truncated_torchscript(tmp: Path) -> None:
    _torchscript(tmp)
    (tmp / "net.pt").write_bytes((tmp / "net.pt").read_bytes()[:100])


def _folder(
    kind: str = "png",
    *,
    spoil: Callable[[Path], None] | None = None,
    masks: bool = False,
    rows: Callable[[list[str]], list[str]] | None = None,
) -> Callable[[Path], None]:
    """A dataset under tmp/data: six 8x8 files img0..img5 (``png``, ``npy`` or ``nii.gz``
    volumes), a labels CSV whose split column puts img4, img5 in test; ``spoil(data)`` then
    breaks something, ``rows`` edits the CSV lines."""

    def files(tmp: Path) -> None:
        from PIL import Image

        data = tmp / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        header = "image,label,split" + (",mask" if masks else "")
        lines = [header]
        for k, split in enumerate(["train", "train", "val", "val", "test", "test"]):
            pixels = rng.random((8, 8))
            name = f"img{k}.{kind}"
            if kind == "png":
                Image.fromarray((pixels * 255).astype(np.uint8)).save(data / name)
            elif kind == "npy":
                np.save(data / name, pixels.astype(np.float32))
            else:
                import nibabel as nib

                volume = rng.random((8, 8, 8)).astype(np.float32)
                nib.save(nib.Nifti1Image(volume, np.eye(4)), data / name)
            lines.append(f"{name},{k % 2},{split}" + (",mask.png" if masks else ""))
        if masks:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(data / "mask.png")
        if rows is not None:
            lines = rows(lines)
        (data / "labels.csv").write_text("\n".join(lines) + "\n")
        if spoil is not None:
            spoil(data)

    return files


def _truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def spoil(data: Path) -> None:
        raw = (data / name).read_bytes()
        (data / name).write_bytes(raw[: int(len(raw) * keep)])

    return spoil


def _corrupt_png(data: Path) -> None:
    raw = bytearray((data / "img5.png").read_bytes())
    at = raw.index(b"IDAT") + 8  # into the compressed pixels: the header still reads
    raw[at : at + 2] = bytes(b ^ 0xFF for b in raw[at : at + 2])
    (data / "img5.png").write_bytes(bytes(raw))


def _nan_npy(data: Path) -> None:
    arr = np.load(data / "img5.npy")
    arr[3, 3] = np.nan
    np.save(data / "img5.npy", arr)


def _object_npy(data: Path) -> None:
    payload = _Payload(data.parent / "pwned")
    np.save(data / "img5.npy", np.array([payload], dtype=object), allow_pickle=True)


def _rgb_mask(data: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "mask.png")


def _files_suite(kind: str = "image_folder", **params: Any) -> dict[str, Any]:
    return {"datasets": [{kind: {"root": "{tmp}/data", **params}}]}


def _summary_only(ctx: Ctx, run: Path, rename: dict[str, str] | None = None) -> Path:
    """A copy of ``run``'s summary.csv alone in the case's folder, with names replaced."""
    text = (run / "summary.csv").read_text()
    for old, new in (rename or {}).items():
        text = text.replace(old, new)
    (ctx.tmp / "side").mkdir()
    (ctx.tmp / "side" / "summary.csv").write_text(text)
    return ctx.tmp / "side" / "summary.csv"


def _png_bomb(data: Path) -> None:
    """A 100-byte PNG whose header claims 20000 x 20000 pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        return struct.pack(">I", len(body)) + kind + body + crc

    header = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    (data / "img5.png").write_bytes(png)


def _lying_npy(data: Path) -> None:
    """A .npy whose header claims 10^10 values over 16 bytes of data."""
    with (data / "img5.npy").open("wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (100_000, 100_000)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 16)


def _symlink_loop(data: Path) -> None:
    (data / "img5.png").unlink()
    (data / "img5.png").symlink_to(data / "img5.png")


def _images(tmp: Path, *, rows: list[str], mask_shape: tuple[int, int] = (8, 8)) -> None:
    """An image_folder under tmp/data: two 8x8 .npy images, a mask, and the CSV ``rows``."""
    data = tmp / "data"
    data.mkdir()
    for k in range(4):
        np.save(data / f"img{k}.npy", np.full((8, 8), k / 4, np.float32))
    np.save(data / "mask.npy", np.ones(mask_shape, np.uint8))
    (data / "broken.npy").write_bytes(b"not an npy file")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")


def _folder_suite(tmp_fmt: str = "{tmp}/data", dataset: str = "image_folder") -> str:
    return (
        "name: files\n"
        f"datasets: [{{{dataset}: {{root: '{tmp_fmt}'}}}}]\n"
        "models: [tests.fakes:TinyModel]\n"
        "methods: [tests.fakes:Grad]\n"
        "metrics: [tests.fakes:MaskMass]\n"
    )


def _write(path: Path, content: bytes | str) -> Callable[[Path], None]:
    def make(tmp: Path) -> None:
        target = tmp / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)

    return make


CASES = [
    # -- the YAML file itself
    Case("missing-file", None, "suite file not found"),
    Case("malformed-yaml", "name: x\nmethods: [a, b\n", "invalid YAML"),
    Case("tab-indented-yaml", "name: x\n\tmethods: [a]\n", "invalid YAML"),
    Case(
        "yaml-is-a-list", "- a\n- b\n", "<top level>: expected a mapping of suite fields, got list"
    ),
    Case("empty-file", "", "<top level>: expected a mapping of suite fields, got empty"),
    Case("python-tag", "name: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    Case(
        "duplicate-top-level-key",
        _BASE + "methods: [grad_cam]\n",
        "methods: duplicate key 'methods' (first on line 4, again on line 6)",
    ),
    Case(
        "duplicate-key-in-params",
        _BASE.replace("[saliency]", "[{integrated_gradients: {steps: 8, steps: 16}}]"),
        "methods[0].integrated_gradients.steps: duplicate key 'steps'",
    ),
    Case(
        "duplicate-key-deep-in-kwargs",
        _BASE.replace(
            "[cnn_gap]",
            "\n  - user_model:\n      module: tests.fakes:_Net\n      kwargs:\n"
            "        a: 1\n        a: 2\n",
        ),
        "models[0].user_model.kwargs.a: duplicate key 'a' (first on line 7, again on line 8)",
    ),
    Case(
        "duplicate-keys-all-reported",
        "name: x\nname: y\nseed: 1\nseed: 2\n",
        "seed: duplicate key 'seed'",
        problems=2,
    ),
    Case(
        "alias-bomb-in-version",
        _bombed(_BASE + "version: *l8\n"),
        "expands to more than 1,000,000 nodes",
        fast=True,
    ),
    Case(
        "alias-bomb-in-method-param",
        _bombed(_BASE.replace("[saliency]", "[{integrated_gradients: {steps: *l8}}]")),
        "expands to more than 1,000,000 nodes",
        fast=True,
    ),
    Case(
        "alias-bomb-in-user-model-kwargs",
        _bombed(
            _BASE.replace("[cnn_gap]", "[{user_model: {module: 'tests.fakes:_Net', kwargs: *l8}}]")
        ),
        "expands to more than 1,000,000 nodes",
        fast=True,
    ),
    Case(
        "recursive-alias",
        _BASE + "version: &v [1, *v]\n",
        "refers to itself",
        fast=True,
    ),
    Case(
        "deep-flow-sequence",
        _BASE + "version: " + "[" * 50_000 + "]" * 50_000 + "\n",
        "nests deeper than 64 levels",
        fast=True,
    ),
    Case(
        "deep-through-alias-chain",
        _BASE
        + "chain:\n  - &c0 [1]\n"
        + "".join(f"  - &c{i} [*c{i - 1}]\n" for i in range(1, 100)),
        "nests deeper than 64 levels (through its aliases)",
        fast=True,
    ),
    Case("non-utf8-suite", _BASE.encode() + b"version: caf\xe9\n", "is not UTF-8", fast=True),
    Case("two-documents", _BASE + "---\n" + _BASE, "invalid YAML"),
    Case(
        "huge-suite-file",
        _BASE + "#" + "x" * (1 << 20) + "\n",
        "a suite is a small YAML file (at most 1 MiB)",
        fast=True,
    ),
    # -- top-level fields
    Case("unknown-field", {"metrcs": ["x"]}, "metrcs: unknown field; did you mean 'metrics'?"),
    Case("missing-name", {"name": None}, "name: expected a name of letters, digits"),
    Case("name-too-long", {"name": "x" * 300}, "at most 100 characters, got 'xxxx"),
    Case("nul-byte-in-suite", _BASE + "version: a\x00b\n", "invalid YAML: unacceptable character"),
    Case("name-with-slash", {"name": "a b/c"}, "got 'a b/c'"),
    Case("seed-not-int", {"seed": "abc"}, "seed: expected an integer >= 0, got 'abc'"),
    Case("seed-negative", {"seed": -1}, "seed: expected an integer >= 0, got -1"),
    Case(
        "seed-huge",
        {"seed": 10**30},
        "seed: expected an integer <= 9,223,372,036,854,775,807 (the largest seed, 2^63 - 1)",
    ),
    Case("batch-size-huge", {"batch_size": 10**12}, "batch_size: expected an integer <= 65,536"),
    Case("limit-huge", {"limit": 10**20}, "limit: expected an integer <= 1,000,000"),
    Case("batch-size-zero", {"batch_size": 0}, "batch_size: expected an integer > 0, got 0"),
    Case("limit-zero", {"limit": 0}, "limit: expected an integer > 0, got 0"),
    Case("device-gpu", {"device": "gpu"}, "device: expected one of cpu, cuda, cuda:N, auto"),
    Case("target-typo", {"target": "labels"}, "target: expected one of 'prediction', 'label'"),
    Case("no-metrics", {"metrics": []}, "metrics: expected a non-empty list of metrics, got []"),
    Case("methods-not-list", {"methods": 5}, "methods: expected a non-empty list"),
    # -- components
    Case("unknown-method", {"methods": ["salency"]}, "did you mean 'saliency'?"),
    Case("unknown-metric", {"metrics": ["pointing_gme"]}, "did you mean 'pointing_game'"),
    Case("unknown-dataset", {"datasets": ["brain_lesion_2d"]}, "did you mean 'brain_lesions_2d'"),
    Case("unknown-model", {"models": ["cnn_gapp"]}, "did you mean 'cnn_gap'?"),
    Case(
        "two-key-component",
        {"methods": [{"saliency": {}, "grad_cam": {}}]},
        "methods[0]: expected a method name or a one-key mapping",
    ),
    Case(
        "params-not-mapping",
        {"methods": [{"saliency": 3}]},
        "methods[0].saliency: expected a mapping of parameters, got 3",
    ),
    Case(
        "param-wrong-type",
        {"metrics": [{"deletion": {"steps": "ten"}}]},
        "metrics[0].deletion.steps: expected an integer, got 'ten'",
    ),
    Case(
        "param-out-of-range",
        {"metrics": [{"deletion": {"steps": -1}}]},
        "metrics[0].deletion.steps: expected an integer > 0, got -1",
    ),
    Case(
        "param-string-for-int",
        {"methods": [{"integrated_gradients": {"steps": "8"}}]},
        "methods[0].integrated_gradients.steps: expected an integer, got '8'",
    ),
    Case(
        "param-bool-for-int",
        {"methods": [{"integrated_gradients": {"steps": True}}]},
        "methods[0].integrated_gradients.steps: expected an integer, got True",
    ),
    Case(
        "param-float-for-int",
        {"metrics": [{"deletion": {"steps": 8.5}}]},
        "metrics[0].deletion.steps: expected an integer, got 8.5",
    ),
    Case(
        "param-number-for-string",
        {"metrics": [{"deletion": {"substrate": 0}}]},
        "metrics[0].deletion.substrate: expected one of",
    ),
    Case(
        "param-integer-key",
        "name: x\ndatasets: [tests.fakes:TinyData]\nmodels: [tests.fakes:TinyModel]\n"
        "methods: [{integrated_gradients: {1: 2}}]\nmetrics: [sparseness]\n",
        "methods[0].integrated_gradients: parameter name 1 is an int; parameter names are strings",
    ),
    Case(
        "kwargs-integer-key",
        {"models": [{"user_model": {"module": "tests.fakes:_Net", "kwargs": {1: 2}}}]},
        "models[0].user_model.kwargs: key 1 is an int; keys must be strings",
    ),
    Case(
        "param-nan",
        {"methods": [{"constant": {"value": float("nan")}}]},
        "methods[0].constant.value: expected a finite number (not NaN or infinity), got nan",
    ),
    Case(
        "param-infinity",
        {"metrics": [{"effective_complexity": {"eps": float("inf")}}]},
        "metrics[0].effective_complexity.eps: expected a finite number",
    ),
    Case(
        "param-yaml-date",
        "name: x\ndatasets: [tests.fakes:TinyData]\nmodels: [tests.fakes:TinyModel]\n"
        "methods: [saliency]\nmetrics: [{tests.fakes:MaskMass: {mode: 2024-01-01}}]\n",
        "metrics[0].tests.fakes:MaskMass.mode: a date (datetime.date(2024, 1, 1)) is not a suite "
        "value",
    ),
    Case(
        "ig-steps-huge",
        {"methods": [{"integrated_gradients": {"steps": 100_000_000_000}}]},
        "methods[0].integrated_gradients.steps: expected an integer <= 10,000 (benchbox's limit "
        "for counts of steps/samples/epochs), got 100000000000",
    ),
    Case(
        "dataset-samples-huge",
        {"datasets": [{"synthetic_lesions_2d": {"n_test": 10**9}}]},
        "datasets[0].synthetic_lesions_2d.n_test: expected an integer <= 1,000,000",
    ),
    Case(
        "model-width-huge",
        {"models": [{"cnn_gap": {"width": 2**40}}]},
        "models[0].cnn_gap.width: expected an integer <= 65,536",
    ),
    Case(
        "topk-pixels-huge",
        {"metrics": [{"topk_intersection": {"k": 2**40}}]},
        "metrics[0].topk_intersection.k: expected at most 16,777,216 pixels",
    ),
    Case(
        "captum-param-huge",
        {"methods": [{"captum:IntegratedGradients": {"n_steps": 10**9}}]},
        "methods[0].captum:IntegratedGradients.n_steps: expected an integer <= 10,000",
    ),
    Case(
        "dataset-seed-negative",
        {"datasets": [{"synthetic_lesions_2d": {"seed": -5}}]},
        "datasets[0].synthetic_lesions_2d.seed: expected an integer >= 0, got -5",
    ),
    Case(
        "unknown-param",
        {"methods": [{"saliency": {"foo": 1}}]},
        "methods[0].saliency.foo: unknown parameter; valid parameters:",
    ),
    Case(
        "literal-param",
        {"metrics": [{"deletion": {"substrate": "purple"}}]},
        "metrics[0].deletion.substrate: expected one of",
    ),
    Case(
        "wrapper-base-unknown",
        {"methods": [{"smoothgrad": {"base": "nothing"}}]},
        "smoothgrad.base: unknown method 'nothing'",
    ),
    Case("duplicate-method", {"methods": ["saliency", "saliency"]}, "is already listed at"),
    Case(
        "module-not-importable",
        {"methods": ["nopkg.mod:Thing"]},
        "cannot import module 'nopkg.mod' named in 'nopkg.mod:Thing'",
    ),
    Case(
        "attr-missing",
        {"methods": ["tests.fakes:Nope"]},
        "module 'tests.fakes' has no attribute 'Nope'",
    ),
    Case(
        "not-a-component",
        {"methods": ["benchbox.core:Batch"]},
        "'benchbox.core:Batch' is a class 'Batch', not a method",
    ),
    Case(
        "several-problems-at-once",
        {"batch_size": -3, "methods": ["salency"], "seed": "x"},
        "3 problems",
        problems=3,
    ),
    # -- files a dataset lists: named relative to the root; `validate --deep` reads them all
    Case(
        "png-truncated-at-run-time",
        _files_suite(),
        "img5.png: cannot read this image (OSError: image file is truncated",
        "run",
        code=1,
        rows=True,
        files=_folder(spoil=_truncate("img5.png", 0.7)),
    ),
    Case(
        "png-truncated-deep",
        _files_suite(),
        "datasets[0].image_folder: img5.png: cannot read this image (OSError: image file is "
        "truncated",
        extra_args=("--deep",),
        files=_folder(spoil=_truncate("img5.png", 0.7)),
    ),
    Case(
        "png-corrupt-at-run-time",
        _files_suite(),
        "img5.png: cannot read this image (OSError: broken data stream",
        "run",
        code=1,
        rows=True,
        files=_folder(spoil=_corrupt_png),
    ),
    Case(
        "png-corrupt-deep",
        _files_suite(),
        "datasets[0].image_folder: img5.png: cannot read this image",
        extra_args=("--deep",),
        files=_folder(spoil=_corrupt_png),
    ),
    Case(
        "npy-nan-at-run-time",
        _files_suite(),
        "img5.npy: 1 of 64 values are NaN or Inf",
        "run",
        code=1,
        rows=True,
        files=_folder("npy", spoil=_nan_npy),
    ),
    Case(
        "npy-nan-deep",
        _files_suite(),
        "datasets[0].image_folder: img5.npy: 1 of 64 values are NaN or Inf",
        extra_args=("--deep",),
        files=_folder("npy", spoil=_nan_npy),
    ),
    Case(
        "nifti-truncated-at-run-time",
        _files_suite("nifti", mode="slices"),
        "img5.nii.gz: cannot read this NIfTI file (EOFError",
        "run",
        code=1,
        rows=True,
        files=_folder("nii.gz", spoil=_truncate("img5.nii.gz")),
    ),
    Case(
        "nifti-truncated-deep",
        _files_suite("nifti", mode="slices"),
        "datasets[0].nifti: img5.nii.gz: cannot read this NIfTI file (EOFError",
        extra_args=("--deep",),
        files=_folder("nii.gz", spoil=_truncate("img5.nii.gz")),
    ),
    Case(
        "deep-lists-every-bad-file",
        _files_suite(),
        "img4.png: cannot read this image",
        extra_args=("--deep",),
        problems=2,
        files=_folder(spoil=lambda d: (_truncate("img4.png", 0.7)(d), _corrupt_png(d))),
    ),
    Case(
        "npy-object-dtype-never-unpickled",
        _files_suite(),
        "img5.npy: cannot read this image (ValueError: Array can't be memory-mapped: Python "
        "objects in dtype.)",
        "run",
        files=_folder("npy", spoil=_object_npy),
        after=_no_payload_ran,
    ),
    Case(
        "mask-rgb",
        _files_suite(),
        "mask.png: mask has Pillow mode 'RGB' (3 channels); a mask has one channel",
        "run",
        files=_folder(masks=True, spoil=_rgb_mask),
    ),
    Case(
        "csv-row-outside-root",
        _files_suite(),
        "image '../other/img.png' is outside the dataset root",
        "run",
        files=_folder(rows=lambda lines: [*lines, "../other/img.png,1,test"]),
    ),
    Case(
        "csv-absolute-path-outside-root",
        _files_suite(),
        "image '/etc/hostname' is outside the dataset root",
        "run",
        files=_folder(rows=lambda lines: [*lines, "/etc/hostname,1,test"]),
    ),
    Case(
        "csv-mask-outside-root",
        _files_suite(),
        "mask '../mask.png' is outside the dataset root",
        "run",
        files=_folder(
            masks=True,
            rows=lambda lines: [*lines[:-1], lines[-1].replace("mask.png", "../mask.png")],
        ),
    ),
    Case(
        "csv-empty",
        _files_suite(),
        "labels.csv: missing column 'image'; found no header",
        "run",
        files=_folder(spoil=lambda d: (d / "labels.csv").write_bytes(b"")),
    ),
    Case(
        "csv-header-only",
        _files_suite(),
        "labels.csv: the labels CSV has no rows",
        "run",
        files=_folder(rows=lambda lines: lines[:1]),
    ),
    Case(
        "csv-duplicate-sample-id",
        _files_suite(),
        "image 'img1.png' is listed again (first on line 3)",
        "run",
        files=_folder(rows=lambda lines: [*lines, "img1.png,0,test"]),
    ),
    Case(
        "csv-not-utf8",
        _files_suite(),
        "cannot read the labels CSV",
        "run",
        files=_folder(spoil=lambda d: (d / "labels.csv").write_bytes(b"image,label\n\xff.png,1\n")),
    ),
    Case(
        "png-decompression-bomb",
        _files_suite(),
        "img5.png: cannot read this image (DecompressionBombError",
        "run",
        files=_folder(spoil=_png_bomb),
        fast=True,
    ),
    Case(
        "npy-header-lies-about-its-size",
        _files_suite(),
        "img5.npy: cannot read this image",
        "run",
        files=_folder("npy", spoil=_lying_npy),
        fast=True,
    ),
    Case(
        "csv-image-symlink-loop",
        _files_suite(),
        "img5.png not found",
        "run",
        files=_folder(spoil=_symlink_loop),
    ),
    # -- user code is isolated: whatever it raises is that component's error
    Case(
        "user-module-exits-on-import",
        {"methods": ["bb_exits:Thing"]},
        "importing it raised SystemExit(3) (it calls sys.exit)",
        files=_write(Path("bb_exits.py"), "import sys\nsys.exit(3)\n"),
    ),
    Case(
        "user-module-syntax-error",
        {"metrics": ["bb_syntax:Thing"]},
        "importing it raised SyntaxError: invalid syntax",
        files=_write(Path("bb_syntax.py"), "def broken(:\n    pass\n"),
    ),
    Case(
        "user-module-raises-on-import",
        {"datasets": ["bb_raises:Thing"]},
        "importing it raised ZeroDivisionError: division by zero",
        files=_write(Path("bb_raises.py"), "x = 1 / 0\n"),
    ),
    Case(
        "user-getattr-raises",
        {"methods": ["bb_getattr:Thing"]},
        "getting 'Thing' raised RuntimeError: lazy import failed",
        files=_write(
            Path("bb_getattr.py"),
            "def __getattr__(name):\n    raise RuntimeError('lazy import failed')\n",
        ),
    ),
    Case(
        "method-calls-sys-exit",
        {"methods": ["bb_exit_method:Exits"]},
        "method 'bb_exit_method:Exits' failed: SystemExit: 0",
        "run",
        code=1,
        rows=True,
        files=_write(
            Path("bb_exit_method.py"),
            "import sys\nfrom tests.fakes import Grad\n\n"
            "class Exits(Grad):\n    def attribute(self, *a, **k):\n        sys.exit(0)\n",
        ),
    ),
    Case(
        "metric-calls-sys-exit",
        {"metrics": ["bb_exit_metric:Exits"]},
        "metric 'bb_exit_metric:Exits' failed: SystemExit: 5",
        "run",
        code=1,
        rows=True,
        files=_write(
            Path("bb_exit_metric.py"),
            "import sys\nfrom tests.fakes import MaskMass\n\n"
            "class Exits(MaskMass):\n    def score(self, ctx):\n        sys.exit(5)\n",
        ),
    ),
    Case(
        "model-forward-system-exit",
        {"models": [{"user_model": {"module": "bb_exit_forward:Net"}}]},
        "SystemExit: 0",
        "run",
        code=1,
        rows=True,
        files=_write(
            Path("bb_exit_forward.py"),
            "import sys\nimport torch\n\n"
            "class Net(torch.nn.Module):\n"
            "    def __init__(self):\n"
            "        super().__init__()\n"
            "        self.conv = torch.nn.Conv2d(1, 2, 3)\n"
            "    def forward(self, x):\n"
            "        raise SystemExit(0)\n",
        ),
    ),
    Case(
        "model-forward-fails-mid-run",
        {"models": ["bb_flaky:Flaky"]},
        "model 'bb_flaky:Flaky' failed: SystemExit: 0",
        "run",
        code=1,
        rows=True,
        files=_write(
            Path("bb_flaky.py"),
            "import torch\nfrom tests.fakes import TinyModel\n\n"
            "class _Exit(torch.nn.Module):\n"
            "    def __init__(self, inner):\n"
            "        super().__init__()\n"
            "        self.inner = inner\n"
            "    def forward(self, x):\n"
            "        raise SystemExit(0)\n\n"
            "class Flaky(TinyModel):\n"
            "    def build(self, dataset, **kw):\n"
            "        model = super().build(dataset, **kw)\n"
            "        model.module = _Exit(model.module)\n"
            "        return model\n",
        ),
    ),
    Case(
        "dataset-fails-mid-run",
        {"datasets": ["bb_flaky_data:Flaky"]},
        "reading the test data failed: SystemExit: 7",
        "run",
        code=1,
        rows=True,
        files=_write(
            Path("bb_flaky_data.py"),
            "import sys\nfrom tests.fakes import TinyData\n\n"
            "class Flaky(TinyData):\n"
            "    def get(self, split, indices):\n"
            "        if split == 'test' and min(indices) >= 4:\n"
            "            sys.exit(7)\n"
            "        return super().get(split, indices)\n",
        ),
    ),
    Case(
        "nothing-computed",
        {"models": ["tests.fakes:NoLayerModel"], "methods": ["tests.fakes:NeedsLayer"]},
        "no value was computed: every row is skipped or an error",
        "run",
        code=1,
    ),
    # -- the user's models and weights: checked before any job or run folder
    Case(
        "user-model-module-missing",
        _user_model("bb_nowhere:Net"),
        "models[0]: user_model.module: cannot import module 'bb_nowhere'",
        "run",
    ),
    Case(
        "user-model-syntax-error",
        _user_model("bb_model_syntax:Net"),
        "importing it raised SyntaxError",
        "run",
        files=_write(Path("bb_model_syntax.py"), "class Net(:\n"),
    ),
    Case(
        "user-model-raises-on-import",
        _user_model("bb_model_raises:Net"),
        "importing it raised KeyError: 'CUDA_HOME'",
        "run",
        files=_write(Path("bb_model_raises.py"), "raise KeyError('CUDA_HOME')\n"),
    ),
    Case(
        "user-model-exits-on-import",
        _user_model("bb_model_exits:Net"),
        "importing it raised SystemExit(3)",
        "run",
        files=_write(Path("bb_model_exits.py"), "import sys\nsys.exit(3)\n"),
    ),
    Case(
        "user-model-factory-returns-str",
        _user_model("bb_factory:make"),
        "models[0]: user_model.module: bb_factory:make(**kwargs) returned a str, not a "
        "torch.nn.Module",
        "run",
        files=_write(Path("bb_factory.py"), "def make():\n    return 'resnet18'\n"),
    ),
    Case(
        "user-model-constructor-raises",
        _user_model("bb_ctor:Net", kwargs={"depth": 3}),
        "checking the model 'user_model' raised ValueError: depth must be even",
        "run",
        files=_write(
            Path("bb_ctor.py"),
            "import torch\n\nclass Net(torch.nn.Module):\n"
            "    def __init__(self, depth):\n        raise ValueError('depth must be even')\n",
        ),
    ),
    Case(
        "weights-missing",
        _user_model(weights="{tmp}/gone.pt"),
        "models[0]: user_model.weights: weights file not found",
        "run",
    ),
    Case(
        "weights-zero-bytes",
        _user_model(weights="{tmp}/w.pt"),
        "the file is truncated or not a PyTorch checkpoint",
        "run",
        files=_saved("w.pt", lambda t: b""),
    ),
    Case(
        "weights-random-bytes",
        _user_model(weights="{tmp}/w.pt"),
        "the file is truncated or not a PyTorch checkpoint",
        "run",
        files=_saved("w.pt", lambda t: bytes(range(256)) * 8),
    ),
    Case(
        "weights-random-safetensors",
        _user_model(weights="{tmp}/w.safetensors"),
        "as safetensors",
        "run",
        files=_saved("w.safetensors", lambda t: b"\xff" * 64),
    ),
    Case(
        "weights-wrong-head",
        _user_model(weights="{tmp}/w.pt"),
        "2 tensors of",
        "run",
        files=_saved(
            "w.pt",
            lambda t: _state(**{"fc.weight": torch.zeros(5, 4)}, **{"fc.bias": torch.zeros(5)}),
        ),
    ),
    Case(
        "weights-other-network",
        _user_model(weights="{tmp}/w.pt"),
        "no key of",
        "run",
        files=_saved("w.pt", lambda t: {"encoder.weight": torch.zeros(3)}),
    ),
    Case(
        "weights-pickle-payload",
        _user_model(weights="{tmp}/w.pt"),
        "benchbox never unpickles arbitrary objects",
        "run",
        files=_saved("w.pt", lambda t: {"fc.weight": _Payload(t / "pwned")}),
        after=_no_payload_ran,
    ),
    Case(
        "weights-a-directory",
        _user_model(weights="{tmp}/w.pt"),
        "is a directory; give the path of the weights file",
        "run",
        files=lambda t: (t / "w.pt").mkdir(),
    ),
    Case(
        "weights-symlink-loop",
        _user_model(weights="{tmp}/loop.pt"),
        "is a symbolic link to nothing (broken, or a loop)",
        "run",
        files=lambda t: (t / "loop.pt").symlink_to(t / "loop.pt"),
    ),
    Case(
        "weights-unknown-suffix",
        _user_model(weights="{tmp}/w.h5"),
        "expected .safetensors or .pt/.pth/.bin/.ckpt",
        "run",
        files=_saved("w.h5", lambda t: b"HDF"),
    ),
    Case(
        "weights-torchscript-archive",
        _user_model(weights="{tmp}/net.pt"),
        "is a TorchScript archive, not a state_dict",
        "run",
        files=_torchscript,
    ),
    Case(
        "torchscript-given-a-state-dict",
        {"models": [{"torchscript": {"path": "{tmp}/w.pt"}}]},
        "is not a TorchScript archive; it is a torch.save file",
        "run",
        files=_saved("w.pt", lambda t: _state()),
    ),
    Case(
        "torchscript-truncated",
        {"models": [{"torchscript": {"path": "{tmp}/net.pt"}}]},
        "is not a TorchScript archive; the file is truncated",
        "run",
        files=_truncated_torchscript,
    ),
    # -- the command line
    Case(
        "cuda-without-gpu",
        {},
        "'cuda' requested but no CUDA device",
        "run",
        extra_args=("--device", "cuda"),
        starts=lambda c: "--device",
    ),
    Case(
        "device-tpu",
        {},
        "--device: unknown device 'tpu'; valid devices: cpu, cuda, cuda:N, auto",
        "run",
        extra_args=("--device", "tpu"),
        starts=lambda c: "--device",
    ),
    Case(
        "device-bad-index",
        {},
        "--device: unknown device 'cuda:x'",
        "run",
        extra_args=("--device", "cuda:x"),
        starts=lambda c: "--device",
    ),
    Case(
        "device-empty",
        {},
        "--device: unknown device ''",
        "run",
        extra_args=("--device", ""),
        starts=lambda c: "--device",
    ),
    Case("suite-asks-cuda", {"device": "cuda"}, "'cuda' requested but no CUDA device", "run"),
    # -- comparing runs
    Case(
        "compare-different-suites",
        None,
        "is a run of suite 'other', the baseline",
        argv=lambda c: ["compare", str(c.earlier.run), str(c.earlier.other)],
        starts=lambda c: str(c.earlier.other),
    ),
    Case(
        "compare-summary-of-another-suite",
        None,
        "is a run of suite 'other'",
        argv=lambda c: ["compare", str(c.earlier.run), str(_summary_only(c, c.earlier.other))],
        starts=lambda c: str(c.tmp / "side" / "summary.csv"),
    ),
    Case(
        "compare-nothing-shared",
        None,
        "nothing to compare: none of its",
        argv=lambda c: [
            "compare",
            str(c.earlier.run),
            str(_summary_only(c, c.earlier.run, {"tests.fakes:": "mine:"})),
        ],
        starts=lambda c: str(c.tmp / "side" / "summary.csv"),
    ),
    Case(
        "compare-nothing-shared-even-allowed",
        None,
        "nothing to compare",
        argv=lambda c: [
            "compare",
            str(c.earlier.other),
            str(_summary_only(c, c.earlier.run, {"tests.fakes:": "mine:"})),
            "--allow-different-suites",
        ],
        starts=lambda c: str(c.tmp / "side" / "summary.csv"),
    ),
    Case(
        "run-baseline-of-another-suite",
        {},
        "is a run of suite 'tiny', the baseline",
        argv=lambda c: [
            "run",
            str(c.suite),
            "--output",
            str(c.earlier.root),
            "--baseline",
            str(c.earlier.other),
        ],
        starts=lambda c: f"--baseline: {c.suite}",
    ),
    # -- data files
    Case(
        "dataset-folder-missing",
        _folder_suite("{tmp}/nowhere"),
        "dataset folder not found",
        "run",
    ),
    Case(
        "labels-csv-missing",
        _folder_suite(),
        "labels.csv",
        "run",
        files=lambda t: (t / "data").mkdir(),
    ),
    Case(
        "label-missing",
        _folder_suite(),
        "label is missing; write a class index",
        "run",
        files=lambda t: _images(
            t, rows=["image,label", "img0.npy,0", "img1.npy,", "img2.npy,1", "img3.npy,0"]
        ),
    ),
    Case(
        "image-file-missing",
        _folder_suite(),
        "gone.npy",
        "run",
        files=lambda t: _images(
            t, rows=["image,label", "img0.npy,0", "gone.npy,1", "img2.npy,1", "img3.npy,0"]
        ),
    ),
    Case(
        "image-unreadable",
        _folder_suite(),
        "broken.npy",
        "run",
        files=lambda t: _images(
            t, rows=["image,label", "img0.npy,0", "broken.npy,1", "img2.npy,1", "img3.npy,0"]
        ),
    ),
    Case(
        "mask-shape-mismatch",
        _folder_suite(),
        "mask.npy",
        "run",
        files=lambda t: _images(
            t,
            rows=[
                "image,label,mask",
                "img0.npy,0,",
                "img1.npy,1,mask.npy",
                "img2.npy,1,",
                "img3.npy,0,",
            ],
            mask_shape=(4, 4),
        ),
    ),
    Case(
        "medmnist-npz-missing",
        "name: x\ndatasets: [{medmnist_npz: {path: '{tmp}/none.npz'}}]\nmodels: [cnn_gap]\n"
        "methods: [saliency]\nmetrics: [sparseness]\n",
        "MedMNIST .npz not found",
        "run",
    ),
    Case(
        "medmnist-npz-not-npz",
        "name: x\ndatasets: [{medmnist_npz: {path: '{tmp}/bad.npz'}}]\nmodels: [cnn_gap]\n"
        "methods: [saliency]\nmetrics: [sparseness]\n",
        "bad.npz",
        "run",
        files=_write(Path("bad.npz"), b"PK not really"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case,
    earlier: Earlier,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BENCHBOX_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path))  # a case's own modules (module: "bb_x:Net")
    if case.files is not None:
        case.files(tmp_path)
    path = tmp_path / "suite.yaml"
    if isinstance(case.suite, dict):
        suite = tiny_suite(output=str(earlier.root), **_filled(case.suite, tmp_path))
        suite = {k: v for k, v in suite.items() if v is not None or k == "name"}
        path.write_text(yaml.safe_dump(suite, sort_keys=False))
    elif isinstance(case.suite, bytes):
        path.write_bytes(case.suite)
    elif isinstance(case.suite, str):
        path.write_text(case.suite.replace("{tmp}", str(tmp_path)))
    ctx = Ctx(tmp_path, path, earlier)
    if case.argv is not None:
        args: tuple[str, ...] = tuple(case.argv(ctx))
    elif case.command == "run" and case.suite is not None:
        args = ("run", str(path), "--output", str(earlier.root))
    else:
        args = (case.command, str(path))
    runs_before = _run_dirs(earlier.root)
    started = time.perf_counter()
    r = cli(capsys, monkeypatch, *args, *case.extra_args)
    elapsed = time.perf_counter() - started
    if case.fast:
        assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert r.code == case.code, r.err
    assert "Traceback" not in r.err + r.out
    if case.after is not None:
        case.after(tmp_path)
    # Whatever happened, the earlier run is exactly as it was.
    assert _snapshot(earlier.run) == earlier.snapshot
    new_runs = _run_dirs(earlier.root) - runs_before
    if case.code == 1:  # a run-time failure: the run finished (not a partial folder), says why
        (new_run,) = new_runs
        assert (new_run / "manifest.json").is_file() and (new_run / "summary.csv").is_file()
        assert "some jobs failed" in r.err or "no value was computed" in r.err, r.err
        if case.rows:
            scores = pd.read_parquet(new_run / "scores.parquet")
            errors = scores[scores["status"] == "error"]
            assert len(errors), scores
            messages = errors["message"]
            assert messages.str.contains(case.expected, regex=False).all(), set(messages)
        else:
            assert case.expected in r.err, r.err
        return
    assert len(r.error_lines) == 1, r.err
    start = case.starts(ctx) if case.starts is not None else str(path)
    assert r.error_lines[0].startswith(f"error: {start}"), r.err
    assert case.expected in r.err, r.err
    problems = [ln for ln in r.err.splitlines() if ln.startswith("  ")]
    if case.problems > 1 or problems:
        assert len(problems) == case.problems, r.err
    assert not new_runs  # refused before any work: no run folder was created


def test_different_suites_compare_on_their_shared_rows_when_allowed(
    earlier: Earlier, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ("compare", str(earlier.run), str(earlier.other), "--allow-different-suites")
    r = cli(capsys, monkeypatch, *args)
    assert r.code == 0, r.err
    assert "only in baseline" in r.out  # tests.fakes:Noise is in tiny only


def test_validate_deep_passes_a_good_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _folder(masks=True)(tmp_path)
    suite = tiny_suite(datasets=[_filled(_files_suite()["datasets"][0], tmp_path)])
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    r = cli(capsys, monkeypatch, "validate", str(path), "--deep")
    assert r.code == 0, r.err
    assert f"{path}: ok" in r.out


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 60


# -- mistakes found after work started: earlier results are kept -------------------------------


def test_unwritable_output_is_one_line_and_keeps_earlier_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCHBOX_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(tiny_suite(output=str(tmp_path / "out"))))
    first = cli(capsys, monkeypatch, "run", str(path))
    assert first.code == 0, first.err
    (earlier,) = (tmp_path / "out" / "tiny").iterdir()
    before = {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()}
    blocker = tmp_path / "a_file"
    blocker.write_text("results cannot go under a file")
    r = cli(capsys, monkeypatch, "run", str(path), "--output", str(blocker / "results"))
    assert r.code == 2, r.err
    assert "Traceback" not in r.err
    assert len(r.error_lines) == 1, r.err
    assert f"error: {blocker}/results/tiny: cannot create the results folder" in r.err
    assert "choose another --output" in r.err
    assert {p: p.read_bytes() for p in earlier.rglob("*") if p.is_file()} == before


# -- what the runner records instead of refusing -------------------------------------------------


class NaNData(TinyData):
    """TinyData whose second test image holds a NaN pixel."""

    def get(self, split: str, indices: Any) -> Batch:  # type: ignore[override]
        batch = super().get(split, indices)
        x = batch.x.clone()
        hit = [k for k, i in enumerate(batch.ids) if i.endswith("-1")]
        for k in hit:
            x[k, 0, 0, 0] = float("nan")
        return Batch(x=x, label=batch.label, ids=batch.ids, mask=batch.mask)


class NaNModel(TinyModel):
    """TinyModel whose logits are NaN for every input."""

    def build(self, dataset: Any, **kw: Any) -> ExplainedModel:
        model = super().build(dataset, **kw)

        class Wrapped(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Tensor) -> Tensor:
                return self.inner(x) * float("nan")

        model.module = Wrapped(model.module)
        return model


class NaNMethod(Grad):
    """Grad with a NaN in every map."""

    def attribute(self, model: Any, x: Tensor, target: Tensor, **kw: Any) -> Tensor:
        a = super().attribute(model, x, target, **kw)
        a[:, :, 0, 0] = float("nan")
        return a


class ZeroMethod(Grad):
    """A map that is zero everywhere."""

    def attribute(self, model: Any, x: Tensor, target: Tensor, **kw: Any) -> Tensor:
        return torch.zeros_like(super().attribute(model, x, target, **kw))


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> pd.DataFrame:
    from benchbox.runner import run_suite
    from benchbox.suite import parse_suite

    monkeypatch.setenv("BENCHBOX_CACHE", str(tmp_path / "cache"))
    suite = parse_suite(tiny_suite(output=str(tmp_path / "out"), **overrides))
    return run_suite(suite).scores


def test_nan_attributions_are_an_error_row_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scores = _run(tmp_path, monkeypatch, methods=[f"{__name__}:NaNMethod", "tests.fakes:Grad"])
    bad = scores[scores["method"] == f"{__name__}:NaNMethod"]
    assert set(bad["status"]) == {"error"}
    assert bad["message"].str.contains("NaN").all(), bad["message"].unique()
    good = scores[scores["method"] == "tests.fakes:Grad"]
    assert set(good["status"]) == {"ok"}  # the other job still ran


def test_nan_model_outputs_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _run(tmp_path, monkeypatch, models=[f"{__name__}:NaNModel"])
    assert set(scores["status"]) == {"error"}
    assert scores["message"].str.contains("NaN").all(), scores["message"].unique()


def test_nan_in_the_data_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = _run(tmp_path, monkeypatch, datasets=[f"{__name__}:NaNData"])
    assert (scores["status"] == "error").any()
    assert scores.loc[scores["status"] == "error", "message"].str.contains("NaN").all()


def test_all_zero_maps_and_empty_masks_are_nan_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metrics undefined on an all-zero map say so; the pointing game scores its tie rule."""
    scores = _run(
        tmp_path,
        monkeypatch,
        methods=[f"{__name__}:ZeroMethod"],
        metrics=[
            "energy_pointing_game",
            "relevance_mass",
            "sparseness",
            "complexity",
            "pointing_game",
        ],
    )
    assert set(scores["status"]) == {"ok"}
    undefined = scores[scores["metric"] != "pointing_game"]
    assert undefined["value"].isna().all()
    reasons = set(undefined["message"])
    assert {"empty mask", "attribution is all zero"} <= reasons, reasons
    assert any(r.startswith("attribution has zero total relevance") for r in reasons), reasons
    # ties="fraction": a constant map scores the lesion's area fraction, not a free hit
    pg = scores[(scores["metric"] == "pointing_game") & (scores["label"] == 1)]
    assert pg["value"].between(0, 0.5).all() and pg["value"].gt(0).all()

"""The attribution cache: hits give exactly what the method computes, keys see every input."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from benchbox.attribution_cache import (
    AttributionCache,
    attribution_key,
    cache_clear,
    cache_enabled,
    cache_ls,
    state_hash,
)
from benchbox.errors import UserError
from benchbox.runner import run_suite
from benchbox.seeding import make_generator
from benchbox.suite import parse_suite
from tests.fakes import tiny_suite

# Noise draws from the method's generator: a hit must leave the generator where the call would.
METHODS = ["tests.fakes:Grad", "tests.fakes:Noise"]
N_BATCHES = 2 * 3  # 2 methods × ceil(10 / 4)


@pytest.fixture(autouse=True)
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCHBOX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCHBOX_ATTRIBUTION_CACHE", raising=False)
    return tmp_path / "cache"


def _run(out: Path, cache: bool | None = None, **overrides: object):
    return run_suite(parse_suite(tiny_suite(methods=METHODS, **overrides)), output=out, cache=cache)


def _values(res) -> pd.DataFrame:
    return res.scores.drop(columns="run_id").reset_index(drop=True)


def test_second_run_hits_every_batch_with_identical_rows(tmp_path: Path, cache_root: Path) -> None:
    first = _run(tmp_path)
    assert first.manifest["attribution_cache"] == {"enabled": True, "hits": 0, "misses": N_BATCHES}
    assert len(list((cache_root / "attributions").glob("*.safetensors"))) == N_BATCHES
    second = _run(tmp_path)
    assert second.manifest["attribution_cache"] == {"enabled": True, "hits": N_BATCHES, "misses": 0}
    assert [j["cache_hits"] for j in second.manifest["jobs"]] == [3, 3]
    pd.testing.assert_frame_equal(_values(second), _values(first), check_exact=True)
    off = _run(tmp_path, cache=False)
    assert off.manifest["attribution_cache"] == {"enabled": False, "hits": 0, "misses": 0}
    pd.testing.assert_frame_equal(_values(off), _values(first), check_exact=True)


def test_a_partial_hit_leaves_the_generator_where_the_method_would(tmp_path: Path) -> None:
    # limit 8 caches batches 0-1; the full run hits them and must draw batch 2's noise from the
    # generator state after batch 1, as an uncached run does.
    _run(tmp_path, limit=8)
    full = _run(tmp_path)
    assert full.manifest["attribution_cache"] == {"enabled": True, "hits": 4, "misses": 2}
    off = _run(tmp_path, cache=False)
    pd.testing.assert_frame_equal(_values(full), _values(off), check_exact=True)


def test_reused_across_suites_and_missed_on_any_changed_input(tmp_path: Path) -> None:
    _run(tmp_path)
    other_suite = _run(tmp_path, name="another", metrics=["tests.fakes:MaskMass"])
    assert other_suite.manifest["attribution_cache"]["hits"] == N_BATCHES
    # a changed method parameter, seed, dataset or model: every batch of the changed job misses
    scaled = run_suite(
        parse_suite(tiny_suite(methods=[{"tests.fakes:Noise": {"scale": 2.0}}])), output=tmp_path
    )
    assert scaled.manifest["attribution_cache"] == {"enabled": True, "hits": 0, "misses": 3}
    assert _run(tmp_path, seed=4).manifest["attribution_cache"]["hits"] == 0
    data = [{"tests.fakes:TinyData": {"seed": 1}}]
    assert _run(tmp_path, datasets=data).manifest["attribution_cache"]["hits"] == 0
    # a different target class (the label instead of the prediction) is another explanation
    by_label = _run(tmp_path, target="label").manifest["attribution_cache"]
    assert by_label["misses"] > 0


def test_env_var_turns_it_off(tmp_path: Path, cache_root: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENCHBOX_ATTRIBUTION_CACHE", "0")
    assert not cache_enabled() and cache_enabled(True)
    res = _run(tmp_path)
    assert res.manifest["attribution_cache"]["enabled"] is False
    assert not (cache_root / "attributions").exists()


def test_key_components_and_round_trip(tmp_path: Path) -> None:
    net = torch.nn.Linear(3, 2)
    base = {
        "dataset": {"name": "d", "spec": {"n": 1}},
        "model": {"name": "m", "weights": state_hash(net)},
        "method": {"name": "saliency", "params": "{}"},
        "ids": ("a", "b"),
        "target": torch.tensor([0, 1]),
        "device": torch.device("cpu"),
    }
    gen = make_generator(5)
    key = attribution_key(**base, generator=gen)
    assert key == attribution_key(**base, generator=make_generator(5))
    assert key != attribution_key(**{**base, "ids": ("b", "a")}, generator=gen)
    assert key != attribution_key(**{**base, "target": torch.tensor([1, 1])}, generator=gen)
    moved = make_generator(5)
    torch.rand(1, generator=moved)  # same seed, later position in the stream
    assert key != attribution_key(**base, generator=moved)
    with torch.no_grad():
        net.weight[0, 0] += 1e-6
    assert key != attribution_key(
        **{**base, "model": {"name": "m", "weights": state_hash(net)}}, generator=gen
    )

    cache = AttributionCache(tmp_path)
    attr = torch.rand(2, 1, 4, 4)
    after = make_generator(5)
    torch.rand(7, generator=after)
    cache.save(key, attr, after)
    restored = make_generator(0)
    got = cache.load(key, torch.device("cpu"), restored)
    assert got is not None and torch.equal(got, attr)
    assert torch.equal(restored.get_state(), after.get_state())
    assert (cache.hits, cache.misses) == (1, 0)
    # a garbled entry is a miss and leaves the generator alone
    cache.path(key).write_bytes(b"not a safetensors file")
    untouched = make_generator(9)
    assert cache.load(key, torch.device("cpu"), untouched) is None
    assert torch.equal(untouched.get_state(), make_generator(9).get_state())
    assert (cache.hits, cache.misses) == (1, 1)


def test_ls_and_clear(tmp_path: Path, cache_root: Path) -> None:
    _run(tmp_path, models=[{"cnn_gap": {"width": 4, "epochs": 1}}])
    ls = cache_ls().set_index("kind")
    attr_files = list((cache_root / "attributions").iterdir())
    files = list((cache_root / "models").iterdir())
    # the weights, their facts, and the (empty) lock that made one process train them
    model_files = [f for f in files if f.suffix != ".lock"]
    assert sorted(f.suffix for f in files) == [".json", ".lock", ".pt"]
    assert ls.loc["attributions", "entries"] == N_BATCHES == len(attr_files)
    assert ls.loc["attributions", "bytes"] == sum(f.stat().st_size for f in attr_files)
    assert ls.loc["models", "entries"] == 1  # weights + facts file: one entry
    assert ls.loc["models", "bytes"] == sum(f.stat().st_size for f in model_files)
    assert ls.loc["models", "path"] == str(cache_root / "models")

    n, size = cache_clear("attributions")
    assert (n, size) == (N_BATCHES, ls.loc["attributions", "bytes"])
    assert cache_ls().set_index("kind").loc["attributions", "entries"] == 0
    assert cache_clear() == (len(model_files), ls.loc["models", "bytes"])
    assert cache_clear() == (0, 0)
    # a lock may be held by a process training that model: clear leaves it alone
    assert [f.suffix for f in (cache_root / "models").iterdir()] == [".lock"]
    with pytest.raises(UserError, match=r"unknown kind 'weights'; use one of models, attribut"):
        cache_clear("weights")

"""Model delivery's judges and its loop, one at a time through their small interfaces."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.batcher import Batcher
from gateway.config import load_settings
from gateway.manifest import default_bundle_dir, load_bundle
from gateway.metrics import Metrics
from gateway.modelcache import ModelCache
from gateway.modelsync import ModelSync
from gateway.modelwatch import LiveWatch, Shadow
from gateway.scoring import Scorer


def test_live_watch_trips_on_failed_calls_in_a_row_only() -> None:
    watch = LiveWatch(errors=3, nonfinite=0.1, window=100)
    watch.failed("boom")
    watch.failed("boom")
    watch.scored(10, 0)  # a good batch breaks the run
    watch.failed("boom")
    watch.failed("boom")
    assert watch.tripped is None
    watch.failed("bang")
    assert watch.tripped == "3 model calls in a row failed, last: bang"


def test_live_watch_trips_on_the_share_of_nonfinite_scores_over_its_window() -> None:
    watch = LiveWatch(errors=3, nonfinite=0.1, window=100)
    watch.scored(50, 10)  # 20%, but the window is not full yet
    assert watch.tripped is None
    for _ in range(20):  # the bad batch slides out of the window
        watch.scored(10, 0)
    watch.scored(10, 5)
    assert watch.tripped is None  # 5 of 100
    watch.scored(10, 6)
    assert watch.tripped is not None
    assert "11 of its last 100 scores were NaN or infinite" in watch.tripped


def _scorer() -> Scorer:
    return Scorer(load_bundle(default_bundle_dir()))


def test_shadow_verdict_compares_and_names_every_reason() -> None:
    shadow = Shadow(_scorer(), 4, 0.0, score_min=0.0, score_max=1.0, max_alert_share=0.5)
    live = np.array([0.1, 0.2, 0.3, 0.4, 0.5], dtype=np.float32)
    shadow.fold(np.array([0.1, np.nan, 2.0, 0.7, 0.8], dtype=np.float32), live)
    ok, report = shadow.verdict()
    assert not ok
    assert report["nonfinite"] == 1
    assert report["out_of_bounds"] == 1
    assert "1 NaN or infinite scores" in report["reason"]
    assert "1 scores outside [0.0, 1.0]" in report["reason"]
    assert "3 of 5 scores over its threshold" in report["reason"]  # 0.7, 0.8 and 2.0 > 0.5996
    assert report["live"]["mean"] == pytest.approx(0.3)


def test_shadow_of_a_candidate_with_other_features_reads_them_from_the_raw_readings() -> None:
    shadow = Shadow(_scorer(), 1, 0.0, None, None, 1.0)
    shadow.adapt(("temperature", "vibration"))  # the live model takes other features
    b = Batcher(10, n_features=2)
    full = {"temperature": 40.0, "vibration": 2.0, "current": 15, "pressure": 5, "speed": 1400}
    b.add("m1", 1.0, [40.0, 2.0], full, 0.0)
    b.add("m2", 1.0, [41.0, 2.1], {"temperature": 41.0, "vibration": 2.1}, 0.0)
    features, keep = shadow.features_for(b.take())
    assert features.shape == (1, 5)
    assert keep.tolist() == [True, False]
    assert shadow.missing == 1


def test_model_cache_keeps_the_last_good_versions_and_remembers_refusals(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, keep=2).open()
    for v in ("1", "2", "3"):
        cache.incoming(v)
        cache.admit(v)
        cache.mark_good(v)
    assert cache.good == ["2", "3"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [".incoming", "2", "3"]
    cache.mark_bad("3", "NaN live")
    again = ModelCache(tmp_path, keep=2).open()
    assert again.good == ["2"]
    assert again.bad == {"3": "NaN live"}


class _Target:
    """The gateway as model delivery sees it."""

    def __init__(self) -> None:
        self.scorer: Scorer | None = _scorer()
        self.reports = 0

    def swap_model(self, scorer: Scorer) -> asyncio.Future[None]:
        self.scorer = scorer
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def fields_seen(self, within: float) -> set[str] | None:
        return None

    def set_shadow(self, shadow: Shadow | None) -> None:
        pass

    def publish_model_report(self) -> None:
        self.reports += 1


class _BrokenStore:
    url = "test://broken"

    def latest(self, etag: str | None = None) -> Any:
        raise RuntimeError("a bug in a store")


async def test_a_failing_step_is_reported_and_polling_goes_on(tmp_path: Path) -> None:
    settings = load_settings(
        gateway={"data_dir": tmp_path}, model={"poll_interval": 1, "poll_jitter": 0}
    )
    sync = ModelSync(settings, Metrics())
    sync.open()
    store = _BrokenStore()
    sync.store = store  # type: ignore[assignment]
    target = _Target()
    task = asyncio.create_task(sync.run(target))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(1.5)  # the first poll at once, the second a second later
        assert not task.done()
        assert sync.last_event is not None
        assert sync.last_event.event == "failed"
        assert sync.last_event.reason == "RuntimeError: a bug in a store"
        assert target.scorer is not None
        assert target.scorer.label == "machine-health@1.0.0"
    finally:
        task.cancel()

"""Model delivery at the site: poll the bucket, fetch, verify, validate, hot-swap, watch.

The source's ``LATEST`` names the version to run (written last by ``edge-gateway model
publish``, so a half-uploaded version is never seen). Every ``model.poll_interval`` (with
jitter) the gateway asks for it with ``If-None-Match``: when nothing changed that is one small
request answered 304, and the bucket is never listed. A new version is downloaded into the local
cache (a broken download resumes), its size, sha256 and signature checked, loaded into a new
ONNX Runtime session, checked against the manifest and against the fields the readings carry,
run on its golden samples, optionally scored in the shadow of the live model, and only then
swapped in between two batches. Any failure keeps the running model and is reported, with the
reason, on the retained ``gateway/<id>/model`` topic and in metrics; polling goes on.

The live model is watched: failed calls in a row, or too many NaN or infinite scores, roll it
back to the previous good version. The cache keeps the last good versions, so the gateway boots
on the newest of them without the network; the bundled default serves when nothing is cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .config import Settings
from .errors import ConfigError, ModelError
from .manifest import MANIFEST_NAME, Bundle, Manifest, default_bundle_dir, load_bundle
from .modelcache import ModelCache
from .modelstore import ModelStore, NotFound, StoreError, open_store
from .modelwatch import LiveWatch, Shadow
from .scoring import Scorer
from .signing import load_public_key, verify_manifest

__all__ = ["ModelSync", "SwapTarget"]

log = logging.getLogger(__name__)

# A version names a folder: the manifest's pattern, minus the two names a path gives meaning to.
_BAD_VERSIONS = {".", ".."}


class SwapTarget(Protocol):
    """What model delivery needs from the gateway."""

    @property
    def scorer(self) -> Scorer | None: ...
    def swap_model(self, scorer: Scorer) -> asyncio.Future[None]: ...
    def fields_seen(self, within: float) -> set[str] | None: ...
    def set_shadow(self, shadow: Shadow | None) -> None: ...
    def publish_model_report(self) -> None: ...


# -- the poller ------------------------------------------------------------------------------
class Transient(ModelError):
    """Could not finish now (network, missing object, fields not seen yet): try at the next poll."""


@dataclass
class Event:
    event: str  # swapped, rejected, rolled_back, shadow_started, shadow_rejected, fetch_failed
    version: str | None
    reason: str | None = None
    detail: dict[str, Any] | None = None
    ts: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"event": self.event, "version": self.version, "ts": self.ts}
        if self.reason:
            body["reason"] = self.reason
        if self.detail:
            body["detail"] = self.detail
        return body


def _complete(folder: Path) -> bool:
    """Whether ``folder`` holds a whole bundle whose file matches its manifest."""
    try:
        load_bundle(folder)
    except ModelError:
        return False
    return True


class ModelSync:
    """Boots the model, then (with a source) polls, validates, swaps, shadows and rolls back."""

    def __init__(self, settings: Settings, metrics: Any) -> None:
        self.settings = settings
        s = settings.model
        self._metrics = metrics
        self.cache = ModelCache(settings.model_cache, s.keep)
        self._key: Ed25519PublicKey | None = None
        self.store: ModelStore | None = None
        self.etag: str | None = None
        self.latest: str | None = None  # what LATEST named at the last poll
        self.last_event: Event | None = None
        self.last_poll: float | None = None
        self.previous: str | None = None  # the version before the live one, for rollback
        self.shadow: Shadow | None = None
        self._shadow_waiter: asyncio.Task[None] | None = None
        self.polls: dict[str, int] = {"not_modified": 0, "changed": 0, "failed": 0}
        self.swaps = 0
        self.rejected = 0
        self.rollbacks = 0
        self.watch = LiveWatch(s.rollback_errors, s.rollback_nonfinite, s.rollback_window)
        self._wake = asyncio.Event()

    @property
    def source(self) -> str | None:
        return self.store.url if self.store is not None else None

    # -- boot ----------------------------------------------------------------------------
    def open(self) -> None:
        """Read the trusted key, the cache's state and the source's address (blocking; no
        network). A bad key file or source stops start-up with the reason."""
        s = self.settings
        if s.model.public_key is not None:
            try:
                self._key = load_public_key(s.model.public_key)
            except ConfigError as exc:
                raise ConfigError(f"model.public_key [EDGEGW_MODEL__PUBLIC_KEY]: {exc}") from exc
        self.cache.open()
        if s.model.source:
            try:
                self.store = open_store(
                    s.model.source,
                    oci_config=s.uplink.oci_config,
                    oci_profile=s.uplink.oci_profile,
                    auth=s.uplink.auth,
                    endpoint=s.model.endpoint,
                    timeout=s.model.timeout,
                )
            except ConfigError as exc:
                raise ConfigError(f"model.source [EDGEGW_MODEL__SOURCE]: {exc}") from exc

    def boot(self) -> Scorer:
        """The model to start on (blocking): the newest good cached version that still checks
        out, else the bundled default. Needs no network; call ``open`` first."""
        for version in reversed(self.cache.good):
            try:
                scorer = self._load(self.cache.path(version), version)
            except ModelError as exc:
                # Skipped, not condemned: a wrong key file or a full disk must not delete a
                # good cache; a copy that is really damaged is fetched again when LATEST names it.
                log.warning("cached model skipped at boot version=%s reason=%s", version, exc)
                continue
            log.info("model from cache model=%s", scorer.label)
            self._set_previous(version)
            return scorer
        scorer = self._load(default_bundle_dir(), None)
        log.debug("bundled default model model=%s", scorer.label)
        return scorer

    def _set_previous(self, live: str) -> None:
        older = [v for v in self.cache.good if v != live]
        self.previous = older[-1] if older else None

    def _load(self, directory: Path, version: str | None) -> Scorer:
        """Check and load a bundle folder (blocking). ``version`` None: the bundled default,
        which ships inside the package and needs no signature."""
        bundle = load_bundle(directory)
        if version is not None:
            self._check_bundle(bundle.manifest, version)
        return self._scorer(bundle)

    def _check_bundle(self, manifest: Manifest, version: str) -> None:
        if manifest.version != version:
            raise ModelError(
                f"manifest says version {manifest.version!r}, it was published as {version!r}"
            )
        if self._key is not None:
            verify_manifest(manifest, self._key)

    def _scorer(self, bundle: Bundle) -> Scorer:
        sc = self.settings.scoring
        return Scorer(
            bundle, intra_op_threads=sc.intra_op_threads, inter_op_threads=sc.inter_op_threads
        )

    # -- the loop --------------------------------------------------------------------------
    async def run(self, target: SwapTarget) -> None:
        """Poll until cancelled; handle rollbacks and shadow verdicts as they come."""
        s = self.settings.model
        next_poll = time.monotonic() if self.store is not None else float("inf")
        while True:
            timeout = max(0.0, next_poll - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(timeout, 3600.0))
            self._wake.clear()
            try:
                if self.watch.tripped is not None:
                    await self._rollback(target, self.watch.tripped)
                if self.shadow is not None and self.shadow.done.is_set():
                    await self._judge(target)
                if time.monotonic() >= next_poll:
                    jitter = 1.0 + random.uniform(-s.poll_jitter, s.poll_jitter)
                    next_poll = time.monotonic() + s.poll_interval * jitter
                    await self.poll(target)
            except Exception as exc:  # a full disk, a bug: say so, keep serving, keep polling
                log.exception("model delivery step failed")
                self._report(target, Event("failed", None, f"{type(exc).__name__}: {exc}"))

    def wake(self) -> None:
        """Called from the scoring loop when the watch trips or a shadow run is complete."""
        self._wake.set()

    async def poll(self, target: SwapTarget) -> None:
        """One poll of LATEST and whatever it leads to. Never raises for a bad model."""
        assert self.store is not None
        store = self.store
        self.last_poll = time.time()
        try:
            latest = await asyncio.to_thread(store.latest, self.etag)
        except (StoreError, OSError) as exc:
            self.polls["failed"] += 1
            self._report(target, Event("fetch_failed", None, f"reading LATEST failed: {exc}"))
            return
        if latest is None:
            self.polls["not_modified"] += 1
            return
        self.polls["changed"] += 1
        version = latest.version
        self.latest = version
        if self.shadow is not None and self.shadow.candidate.manifest.version != version:
            # Withdrawn or replaced: it must not be promoted later.
            await self._withdraw_shadow(target, f"superseded: LATEST names {version} now")
        live = target.scorer
        if live is not None and self._is_live(live, version):
            self.etag = latest.etag
            return
        if self.shadow is not None and self.shadow.candidate.manifest.version == version:
            self.etag = latest.etag
            return
        if version in self.cache.bad:
            self.etag = latest.etag
            self._report(target, Event("rejected", version, self.cache.bad[version]))
            return
        try:
            candidate = await self._prepare(store, version, target)
        except Transient as exc:
            # etag stays unset: the next poll asks again in full and tries again.
            self.etag = None
            self._report(target, Event("fetch_failed", version, str(exc)))
            return
        except ModelError as exc:
            self.etag = latest.etag
            self.cache.discard_incoming(version)
            self.cache.mark_bad(version, str(exc))
            self.rejected += 1
            self._report(target, Event("rejected", version, str(exc)))
            return
        self.etag = latest.etag
        s = self.settings.model
        if s.shadow_readings or s.shadow_seconds:
            await self._start_shadow(target, candidate)
        else:
            await self._swap(target, candidate, "swapped")

    def _is_live(self, live: Scorer, version: str) -> bool:
        # The bundled default is never "the version in the bucket", whatever it is called.
        return live.manifest.version == version and self.cache.holds(live)

    async def _prepare(self, store: ModelStore, version: str, target: SwapTarget) -> Scorer:
        if version in _BAD_VERSIONS or "/" in version or not version:
            raise ModelError(f"LATEST names {version!r}, which is not a version")
        incoming = self.cache.root / ".incoming" / version
        if (self.cache.path(version) / MANIFEST_NAME).exists():
            directory = self.cache.path(version)  # fetched before: no download
        elif await asyncio.to_thread(_complete, incoming):
            directory = incoming  # fetched at an earlier poll, waiting for its fields
        else:
            directory = await asyncio.to_thread(self._download, store, version)
        scorer = await asyncio.to_thread(self._load_checked, directory, version)
        self._check_fields(scorer, target)
        if directory != self.cache.path(version):
            await asyncio.to_thread(self.cache.admit, version)
            scorer.path = self.cache.path(version) / scorer.path.name
        return scorer

    def _download(self, store: ModelStore, version: str) -> Path:
        """Fetch a version's manifest and model into ``.incoming`` (blocking)."""
        folder = self.cache.incoming(version)
        try:
            raw = store.read(version, MANIFEST_NAME)
        except NotFound as exc:
            raise Transient(f"LATEST names {version!r} but its {MANIFEST_NAME} is missing") from exc
        except (StoreError, OSError) as exc:
            raise Transient(f"downloading {version}/{MANIFEST_NAME} failed: {exc}") from exc
        try:
            manifest = Manifest.model_validate_json(raw)
        except ValueError as exc:
            raise ModelError(f"{version}/{MANIFEST_NAME} is not a valid manifest: {exc}") from exc
        # Check what can be checked before fetching a large file.
        self._check_bundle(manifest, version)
        (folder / MANIFEST_NAME).write_bytes(raw)
        model = folder / manifest.model.file
        if model.parent != folder:
            raise ModelError(f"model file {manifest.model.file!r} must sit beside the manifest")
        for attempt in (1, 2):
            try:
                store.download(version, manifest.model.file, model, size=manifest.model.size)
            except NotFound as exc:
                raise Transient(
                    f"LATEST names {version!r} but its {manifest.model.file} is missing"
                ) from exc
            except (StoreError, OSError) as exc:  # the .part stays: the next try resumes it
                raise Transient(
                    f"downloading {version}/{manifest.model.file} failed: {exc}"
                ) from exc
            try:
                load_bundle(folder)
            except ModelError:
                if attempt == 2:
                    raise
                # Damaged on the way or in the cache: fetch it once more from scratch.
                model.unlink(missing_ok=True)
                continue
            break
        return folder

    def _load_checked(self, directory: Path, version: str) -> Scorer:
        return self._load(directory, version)

    def _check_fields(self, scorer: Scorer, target: SwapTarget) -> None:
        """A model needing a field no recent reading carries would dead-letter everything."""
        seen = target.fields_seen(max(600.0, 3 * self.settings.model.poll_interval))
        if seen is None:
            return  # no readings yet: nothing to judge by
        missing = [f for f in scorer.features if f not in seen]
        if missing:
            raise Transient(
                f"{scorer.label} needs {', '.join(map(repr, missing))}, which no recent reading "
                f"carries (readings carry {', '.join(sorted(seen))}); trying again next poll"
            )

    async def _swap(self, target: SwapTarget, scorer: Scorer, event: str, **detail: Any) -> None:
        old = target.scorer
        await target.swap_model(scorer)
        swapped = time.time()  # the event's time is the swap's, not the bookkeeping's after it
        self.watch.reset()
        version = scorer.manifest.version
        if self.cache.holds(scorer):
            await asyncio.to_thread(self.cache.mark_good, version)
            self._set_previous(version)
        self.swaps += 1
        detail = {"from": old.label if old else None, "to": scorer.label, **detail}
        log.info("model swapped from=%s to=%s", detail["from"], scorer.label)
        self._report(target, Event(event, version, None, detail, ts=swapped))

    async def _start_shadow(self, target: SwapTarget, candidate: Scorer) -> None:
        s = self.settings.model
        if self.shadow is not None:
            await self._withdraw_shadow(target, "superseded")
        shadow = Shadow(
            candidate,
            s.shadow_readings,
            s.shadow_seconds,
            s.shadow_score_min,
            s.shadow_score_max,
            s.shadow_max_alert_share,
        )
        live = target.scorer
        shadow.adapt(live.features if live else candidate.features)
        shadow.done.clear()
        self.shadow = shadow
        target.set_shadow(shadow)
        log.info("model in shadow candidate=%s", candidate.label)
        self._report(target, Event("shadow_started", candidate.manifest.version))
        self._shadow_waiter = asyncio.get_running_loop().create_task(self._when_done(shadow))

    async def _when_done(self, shadow: Shadow) -> None:
        await shadow.done.wait()
        self.wake()

    async def _withdraw_shadow(self, target: SwapTarget, reason: str) -> None:
        """Stop the candidate in shadow without a verdict; its folder goes (it never served)."""
        shadow = self.shadow
        assert shadow is not None
        self.shadow = None
        target.set_shadow(None)
        if self._shadow_waiter is not None:
            self._shadow_waiter.cancel()
            self._shadow_waiter = None
        version = shadow.candidate.manifest.version
        if version not in self.cache.good:
            await asyncio.to_thread(self.cache.discard, version)
        self._report(target, Event("shadow_rejected", version, reason))

    async def _judge(self, target: SwapTarget) -> None:
        shadow = self.shadow
        assert shadow is not None
        self.shadow = None
        self._shadow_waiter = None  # it has finished: that is why we are here
        target.set_shadow(None)
        ok, report = shadow.verdict()
        version = shadow.candidate.manifest.version
        if ok:
            await self._swap(target, shadow.candidate, "swapped", shadow=report)
            return
        reason = f"refused after shadow: {report['reason']}"
        await asyncio.to_thread(self.cache.mark_bad, version, reason)
        self.rejected += 1
        self._report(target, Event("shadow_rejected", version, reason, {"shadow": report}))

    async def _rollback(self, target: SwapTarget, why: str) -> None:
        live = target.scorer
        if live is None:
            self.watch.reset()
            return
        failing = live.manifest.version
        from_cache = self.cache.holds(live)
        choices = [v for v in reversed(self.cache.good) if v != failing]
        scorer: Scorer | None = None
        for version in choices:
            try:
                scorer = await asyncio.to_thread(self._load, self.cache.path(version), version)
                break
            except ModelError as exc:
                await asyncio.to_thread(self.cache.mark_bad, version, f"refused at rollback: {exc}")
        if scorer is None:
            if not from_cache:
                log.error(
                    "live model failing, nothing to roll back to model=%s why=%s", live.label, why
                )
                self.watch.reset()
                self._report(target, Event("rollback_failed", failing, why))
                return
            scorer = await asyncio.to_thread(self._load, default_bundle_dir(), None)
        if from_cache:
            await asyncio.to_thread(self.cache.mark_bad, failing, f"rolled back: {why}")
        await target.swap_model(scorer)
        # Only now: the failing model kept failing while the previous one loaded, and those
        # failures must not count against the model that replaces it.
        self.watch.reset()
        self.rollbacks += 1
        if self.cache.holds(scorer):
            self._set_previous(scorer.manifest.version)
        log.error("model rolled back from=%s to=%s why=%s", live.label, scorer.label, why)
        self._report(
            target,
            Event("rolled_back", failing, why, {"from": live.label, "to": scorer.label}),
        )

    def _report(self, target: SwapTarget, event: Event) -> None:
        last = self.last_event
        if (
            last is not None
            and (last.event, last.version, last.reason)
            == (event.event, event.version, event.reason)
            and event.event in ("rejected", "fetch_failed")
        ):
            return  # the same failure poll after poll: said once is enough
        self.last_event = event
        if event.event in ("rejected", "shadow_rejected", "fetch_failed", "rollback_failed"):
            log.warning("model %s version=%s reason=%s", event.event, event.version, event.reason)
        target.publish_model_report()

    def report(self, live: Scorer | None) -> dict[str, Any]:
        """The retained model topic's body."""
        body: dict[str, Any] = {}
        if live is not None:
            man = live.manifest
            body = {
                "model": man.label,
                "name": man.name,
                "version": man.version,
                "sha256": man.model.sha256,
                "since": live.since.isoformat(),
                "signed_by": man.signature.key_id if man.signature else None,
                "features": list(man.feature_names),
                "threshold": man.alert.threshold,
            }
        body.update(
            source=self.source,
            latest=self.latest,
            last_poll=(
                datetime.fromtimestamp(self.last_poll, UTC).isoformat() if self.last_poll else None
            ),
            previous=self.previous,
            cached=list(self.cache.good),
            shadow=(
                {
                    "candidate": self.shadow.candidate.label,
                    "readings": self.shadow.seen,
                    "of": self.shadow.readings,
                }
                if self.shadow
                else None
            ),
            last_event=self.last_event.as_dict() if self.last_event else None,
        )
        return body

    def register_metrics(
        self, live_counter: Callable[[str, str, Callable[[], float]], None]
    ) -> None:
        for result in self.polls:
            live_counter(
                f"gateway_model_polls_{result}",
                f"Polls of LATEST: {result.replace('_', ' ')}",
                lambda r=result: self.polls[r],  # type: ignore[misc]
            )
        live_counter("gateway_model_swaps", "Models swapped in", lambda: self.swaps)
        live_counter("gateway_model_rejected", "Model versions refused", lambda: self.rejected)
        live_counter("gateway_model_rollbacks", "Live models rolled back", lambda: self.rollbacks)

"""The gateway: ingest → batcher → scorer → scores and alerts, wired to the broker."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from .alerts import AlertTracker
from .batcher import Batch, Batcher
from .config import Settings
from .ingest import DeadLetter, FeatureMap, Ingest
from .manifest import Bundle
from .metrics import HttpServer, Metrics
from .modelsync import ModelSync
from .modelwatch import Shadow
from .mqtt import Ack, Message, MqttClient
from .scoring import Scorer
from .spooler import Scored, Spooler, open_spool
from .uplink import Uplink, make_stream_client

__all__ = ["Gateway"]

log = logging.getLogger(__name__)

_DEADLETTER_PAYLOAD_MAX = 64 * 1024


def _json(obj: Any) -> bytes:
    try:
        return orjson.dumps(
            obj, default=str, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        )
    except TypeError:  # nested deeper than orjson goes (a reading may carry anything extra)
        return orjson.dumps({"unencodable": repr(obj)[:_DEADLETTER_PAYLOAD_MAX]})


def _plain(reading: dict[Any, Any]) -> dict[str, Any]:
    """A reading with text keys (MessagePack allows binary ones, JSON does not)."""
    return {
        k if type(k) is str else k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v
        for k, v in reading.items()
    }


class Gateway:
    """One gateway. ``serve`` runs until ``stop`` is set, then shuts down gracefully:
    intake stops, pending readings are scored and published, ``offline`` is published."""

    def __init__(self, settings: Settings, bundle: Bundle | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self._bundle = bundle
        self._id = settings.gateway.id
        m = settings.mqtt
        self.status_topic = f"gateway/{self._id}/status"
        self.model_topic = f"gateway/{self._id}/model"
        self.deadletter_topic = f"gateway/{self._id}/deadletter"
        self._telemetry = m.telemetry_topic.removesuffix("#")
        self._scores = m.scores_prefix.rstrip("/") + "/"
        self._alerts = m.alerts_prefix.rstrip("/") + "/"
        self._started = time.time()
        self._intake_open = False
        self.scorer: Scorer | None = None
        self.batcher: Batcher | None = None
        self.ingest: Ingest | None = None
        self.alerts: AlertTracker | None = None
        self.scored = 0
        self.shed = 0
        self.deadlettered = 0
        self._recent_letters = 0  # since the last status, for one WARNING line per interval
        self._last_letter: DeadLetter | None = None
        self.http: HttpServer | None = None
        self.spooler: Spooler | None = None
        self.uplink: Uplink | None = None
        self.mqtt = MqttClient(
            settings,
            self._on_message,
            will=(self.status_topic, self._status_payload("offline", reason="connection lost")),
            on_connect=self._on_connect,
        )
        self.mqtt.on_state = self._on_broker_state
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="gateway.scorer")
        self.models = ModelSync(settings, self.metrics)
        self._in_flight = False  # a batch is between take and emit
        self._swap: tuple[Scorer, asyncio.Future[None]] | None = None
        self.shadow: Shadow | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def serve(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; raises if a stage fails for good."""
        s = self.settings
        await asyncio.to_thread(self.models.open)
        if self._bundle is None:
            scorer = self.scorer = await asyncio.to_thread(self.models.boot)
        else:
            scorer = self.scorer = await asyncio.to_thread(
                Scorer,
                self._bundle,
                intra_op_threads=s.scoring.intra_op_threads,
                inter_op_threads=s.scoring.inter_op_threads,
            )
        man = scorer.manifest
        log.info("model loaded model=%s features=%s", man.label, ",".join(man.feature_names))
        self.metrics.model_info.labels(man.name, man.version, man.model.sha256).set(1)
        self.batcher = Batcher(
            s.batcher.max_batch, s.batcher.queue_delay, n_features=len(man.features)
        )
        self.alerts = AlertTracker(man.alert)
        self.ingest = Ingest(
            FeatureMap(man.feature_names, require_ts=s.ingest.require_ts),
            self.batcher,
            topic_prefix=self._telemetry,
            dead_letter=self._dead_letter,
            release=self._release,
            max_readings=s.ingest.max_readings_per_message,
        )
        self.spooler = Spooler(
            await asyncio.to_thread(open_spool, s),
            self._release,
            retry=s.spool.retry,
            commit_interval=s.spool.commit_interval,
            on_commit=self._on_commit,
        )
        if s.uplink.endpoint:
            client = await asyncio.to_thread(make_stream_client, s)
            self.uplink = Uplink(s, self.spooler, client)
            log.info("uplink on endpoint=%s stream=%s", s.uplink.endpoint, s.uplink.stream_id)
        self._register_metrics()
        self.models.register_metrics(self.metrics.live_counter)
        if s.http.enabled:
            self.http = HttpServer(s.http.host, s.http.port, self.metrics, self.health)
            self.http.start()
            log.info("http listening host=%s port=%d", s.http.host, self.http.port)
        self._intake_open = True
        try:
            async with self.mqtt, asyncio.TaskGroup() as tasks:
                spooling = tasks.create_task(self.spooler.run(), name="gateway.spool")
                uplinking = None
                if self.uplink is not None:
                    uplinking = tasks.create_task(self.uplink.run(), name="gateway.uplink")
                scoring = tasks.create_task(self._score_loop(), name="gateway.scoring")
                status = tasks.create_task(self._status_loop(), name="gateway.status")
                models = tasks.create_task(self.models.run(self), name="gateway.models")
                await stop.wait()
                log.info("shutting down: intake stopped, flushing pending=%d", len(self.batcher))
                self._intake_open = False  # unacknowledged messages stay with the broker
                models.cancel()  # a download in its thread finishes and is kept for next time
                self.batcher.close()
                await scoring
                if uplinking is not None:
                    uplinking.cancel()  # what it was sending stays spooled and goes next time
                self.spooler.close()
                await spooling  # committed and acknowledged
                status.cancel()
                if self.mqtt.connected:
                    try:
                        await self.mqtt.publish_confirmed(
                            self.status_topic,
                            self._status_payload("offline", reason="shutdown"),
                            retain=True,
                            timeout=2.0,
                        )
                    except (TimeoutError, OSError) as exc:
                        log.warning("offline status not confirmed error=%s", exc)
                        self.mqtt.will_on_close = True  # the broker says offline for us
        finally:
            if self.http is not None:
                self.http.close()
            if self.spooler is not None:
                self.spooler.shutdown()
            self._executor.shutdown(wait=True)
        log.info("stopped scored=%d", self.scored)

    # -- intake (loop thread, per message) -------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        if not self._intake_open:
            return
        assert self.ingest is not None
        assert self.batcher is not None
        if msg.qos == 0 and (
            len(self.batcher) >= self.settings.ingest.max_pending
            or (self.spooler is not None and self.spooler.blocked)
        ):
            self.shed += 1
            return
        try:
            self.ingest.handle(msg.topic, msg.payload, msg.ack, msg.arrived)
        except Exception:  # a bug, not bad input: keep the loop alive and say so loudly
            log.exception("ingest failed topic=%s", msg.topic)
            self._release(msg.ack)
        if self._waiting() >= self.settings.ingest.max_pending:
            # Enough queued: stop reading and let the broker hold the rest (QoS 1 waits there;
            # brokers do not all honour the receive maximum), instead of growing without bound.
            self.mqtt.pause_reading()

    def _release(self, token: object) -> None:
        if token is not None:
            assert isinstance(token, Ack)
            self.mqtt.ack(token)

    def _dead_letter(self, dl: DeadLetter) -> None:
        self.metrics.deadlettered.labels(dl.kind).inc()
        self._recent_letters += 1
        self.deadlettered += 1
        self._last_letter = dl
        log.debug("dead letter topic=%s reason=%s", dl.topic, dl.reason)
        payload = dl.payload[:_DEADLETTER_PAYLOAD_MAX]
        try:
            body: dict[str, Any] = {"payload": payload.decode("utf-8"), "encoding": "utf-8"}
        except UnicodeDecodeError:
            body = {"payload": base64.b64encode(payload).decode(), "encoding": "base64"}
        body.update(
            topic=dl.topic,
            reason=dl.reason,
            kind=dl.kind,
            gateway=self._id,
            ts=time.time(),
            truncated=len(dl.payload) > len(payload),
        )
        if dl.index is not None:
            body["index"] = dl.index
        self.mqtt.publish(self.deadletter_topic, _json(body), qos=1)

    # -- scoring ---------------------------------------------------------------------------
    async def _score_loop(self) -> None:
        assert self.batcher is not None
        batcher = self.batcher
        try:
            while True:
                await batcher.wait()
                if not len(batcher):
                    if batcher.closed:
                        return  # closed and flushed
                    continue  # a swap scored what woke us
                self._in_flight = True
                batch = batcher.take()
                self._maybe_resume()
                try:
                    await self._score(batch)
                finally:
                    self._in_flight = False
                if self._swap is not None:
                    self._apply_swap()
        finally:
            if self._swap is not None:  # shutting down: the swap will not happen
                self._swap[1].cancel()
                self._swap = None

    async def _score(self, batch: Batch) -> None:
        """Score one batch with the live model, publish and spool the result; then let a
        candidate in shadow score it too."""
        loop = asyncio.get_running_loop()
        scorer = self.scorer
        assert scorer is not None
        start = loop.time()
        try:
            if scorer.recent_call_seconds < self.settings.scoring.inline_below:
                scores = scorer.score(batch.features)
            else:
                scores = await loop.run_in_executor(self._executor, scorer.score, batch.features)
        except Exception as exc:
            self._failed(batch, scorer, exc)
            return
        if not self._scored(batch, scorer, scores, start):
            return
        shadow = self.shadow
        if shadow is not None and not shadow.done.is_set():
            features, keep = shadow.features_for(batch)
            if shadow.candidate.recent_call_seconds < self.settings.scoring.inline_below:
                finished = shadow.observe(features, keep, scores)
            else:
                finished = await loop.run_in_executor(
                    self._executor, shadow.observe, features, keep, scores
                )
            if finished:
                shadow.done.set()  # on the loop's thread: asyncio events are not thread-safe

    def _waiting(self) -> int:
        """Readings taken from the broker and not yet stored: queued for the scorer, or scored
        and waiting for the spool (which holds them while a ``block`` lane is full)."""
        assert self.batcher is not None
        held = self.spooler.held_readings if self.spooler is not None else 0
        return len(self.batcher) + held

    def _maybe_resume(self) -> None:
        """Read from the broker again once what waits is down to half the bound."""
        if self.mqtt.reading_paused and self._waiting() < self.settings.ingest.max_pending // 2:
            self.mqtt.resume_reading()

    def _score_inline(self, batch: Batch) -> None:
        """The same, on the loop thread, without a shadow (only to flush before a swap)."""
        scorer = self.scorer
        assert scorer is not None
        start = asyncio.get_running_loop().time()
        try:
            scores = scorer.score(batch.features)
        except Exception as exc:
            self._failed(batch, scorer, exc)
            return
        self._scored(batch, scorer, scores, start)

    def _failed(self, batch: Batch, scorer: Scorer, exc: Exception) -> None:
        log.error("model call failed model=%s rows=%d error=%s", scorer.label, len(batch), exc)
        self._reject_batch(batch, f"model {scorer.label} failed: {exc}")
        self.models.watch.failed(str(exc))
        if self.models.watch.tripped:
            self.models.wake()

    def _scored(
        self, batch: Batch, scorer: Scorer, scores: npt.NDArray[np.float32], start: float
    ) -> bool:
        metrics = self.metrics
        now = asyncio.get_running_loop().time()
        metrics.queue_delay.observe(start - batch.oldest)
        metrics.model_seconds.observe(now - start)
        try:
            self._emit(batch, scores, scorer)
        except Exception as exc:  # a bug: the batch survives as dead letters, scoring goes on
            log.exception("publishing a batch failed model=%s rows=%d", scorer.label, len(batch))
            self._reject_batch(batch, f"gateway could not publish its scores: {exc}")
            return False
        metrics.batch_size.observe(len(batch))
        metrics.latency.observe(asyncio.get_running_loop().time() - batch.oldest)
        metrics.pending.set(len(self.batcher) if self.batcher else 0)
        return True

    # -- model swaps (loop thread) ---------------------------------------------------------
    def swap_model(self, scorer: Scorer) -> asyncio.Future[None]:
        """Serve ``scorer`` from the next batch on; done once it serves. Between two batches:
        no reading is dropped or scored twice, and each score names the model that made it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._swap is not None:
            self._swap[1].cancel()
        self._swap = (scorer, future)
        if not self._in_flight:
            self._apply_swap()
        return future

    def _apply_swap(self) -> None:
        assert self._swap is not None
        assert self.batcher is not None
        assert self.ingest is not None
        scorer, future = self._swap
        self._swap = None
        old = self.scorer
        assert old is not None
        if scorer.features != old.features:
            # Pending readings were read for the old model's features: it scores them, here
            # and now (no await, so nothing arrives in between), then the layout changes.
            while len(self.batcher):
                self._score_inline(self.batcher.take())
            self._maybe_resume()
            self.ingest.features = FeatureMap(
                scorer.features, require_ts=self.settings.ingest.require_ts
            )
            self.batcher.set_features(len(scorer.features))
        self.scorer = scorer
        assert self.alerts is not None
        self.alerts.policy = scorer.manifest.alert
        man = scorer.manifest
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(man.name, man.version, man.model.sha256).set(1)
        log.info("model in service model=%s features=%s", man.label, ",".join(man.feature_names))
        if not future.done():
            future.set_result(None)  # model delivery reports the swap, with its reason

    def set_shadow(self, shadow: Shadow | None) -> None:
        if shadow is not None and self.scorer is not None:
            shadow.adapt(self.scorer.features)
        self.shadow = shadow

    def fields_seen(self, within: float) -> set[str] | None:
        if self.ingest is None:
            return None
        return self.ingest.fields_seen(asyncio.get_running_loop().time() - within)

    def publish_model_report(self) -> None:
        if self.mqtt.connected:
            self.mqtt.publish(
                self.model_topic, _json(self.models.report(self.scorer)), qos=1, retain=True
            )

    def _emit(self, batch: Batch, scores: np.ndarray, scorer: Scorer) -> None:
        assert self.alerts is not None
        label = scorer.label
        finite = np.isfinite(scores)
        nonfinite = len(scores) - int(np.count_nonzero(finite))
        if nonfinite:
            self.metrics.nonfinite.inc(nonfinite)
        self.models.watch.scored(len(scores), nonfinite)
        if self.models.watch.tripped:
            self.models.wake()
        by_machine: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
        for machine, ts, score in zip(batch.machines, batch.ts, scores.tolist(), strict=True):
            by_machine[machine].append(
                {"machine": machine, "ts": ts, "score": score, "model": label}
            )
        publish = self.mqtt.publish
        for machine, items in by_machine.items():
            publish(self._scores + machine, orjson.dumps(items[0] if len(items) == 1 else items))
        changes = []
        for alert in self.alerts.update(batch.machines, batch.ts, scores):
            self.metrics.alerts.labels(alert.state).inc()
            log.info(
                "alert %s machine=%s score=%.3f threshold=%.3f model=%s",
                alert.state,
                alert.machine,
                alert.score,
                alert.threshold,
                label,
            )
            payload = alert.payload(label, _plain(batch.raw[alert.index]))
            publish(self._alerts + alert.machine, _json(payload), qos=1)
            changes.append((alert, payload))
        self.metrics.alerts_active.set(self.alerts.active)
        self.mqtt.flush()  # scores and alerts leave now; storing them must not delay them
        assert self.spooler is not None
        scored = Scored(self.settings.gateway.site, batch, scores, label, scorer.features, changes)
        self.spooler.put_scored(scored, batch.tokens)  # acknowledged once on disk
        self.scored += len(batch)

    def _reject_batch(self, batch: Batch, reason: str) -> None:
        for machine, raw in zip(batch.machines, batch.raw, strict=True):
            self._dead_letter(
                DeadLetter(self._telemetry + machine, _json(raw), reason, "model_error")
            )
        # Through the spooler, so a message split over batches is acknowledged only after its
        # earlier readings are on disk.
        assert self.spooler is not None
        self.spooler.put([], batch.tokens)

    # -- status and health -----------------------------------------------------------------
    def _on_connect(self) -> None:
        s = self.settings.mqtt
        topic = s.telemetry_topic
        if s.share_group:
            topic = f"$share/{s.share_group}/{topic}"
        self.mqtt.subscribe(topic, s.subscribe_qos)
        self.mqtt.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        self.publish_model_report()

    def _on_broker_state(self, connected: bool) -> None:
        self.metrics.connected.set(1 if connected else 0)
        if not connected:
            self.metrics.reconnects.inc()

    async def _status_loop(self) -> None:
        interval = self.settings.gateway.status_interval
        while True:
            await asyncio.sleep(interval)
            if self._recent_letters and self._last_letter is not None:
                last = self._last_letter
                log.warning(
                    "dead-lettered count=%d in=%.0fs last_topic=%s last_reason=%r",
                    self._recent_letters,
                    interval,
                    last.topic,
                    last.reason,
                )
                self._recent_letters = 0
            if self.mqtt.connected:
                self.mqtt.publish(
                    self.status_topic, self._status_payload("online"), qos=1, retain=True
                )

    def _status_payload(self, state: str, **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "state": state,
            "gateway": self._id,
            "site": self.settings.gateway.site,
            "ts": time.time(),
        }
        if state == "online" or extra.get("reason") == "shutdown":
            body.update(self.health()[1])  # the will cannot: it was fixed at connect time
            if state == "offline":
                del body["broker_connected"]
        body.update(extra)
        return _json(body)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details): healthy while the broker is connected and a model serves."""
        ingest = self.ingest
        details: dict[str, Any] = {
            "broker_connected": self.mqtt.connected,
            "model": self.scorer.label if self.scorer else None,
            "uptime": round(time.time() - self._started, 1),
            "readings_received": ingest.readings_in if ingest else 0,
            "readings_scored": self.scored,
            "readings_deadlettered": self.deadlettered,
            "readings_pending": len(self.batcher) if self.batcher else 0,
            "alerts_active": self.alerts.active if self.alerts else 0,
        }
        if self.spooler is not None:
            details["spool"] = {
                lane: {"records": r, "bytes": b, "readings": n}
                for lane, (r, b, n) in self.spooler.spool.usage().items()
            }
            details["spool_blocked"] = self.spooler.blocked
        if self.uplink is not None:
            details["uplink"] = {
                "connected": self.uplink.connected,
                "messages": self.uplink.sent_messages,
                "bytes": self.uplink.sent_bytes,
            }
        return bool(self.mqtt.connected and self.scorer), details

    def _on_commit(self, records: int, seconds: float) -> None:
        self.metrics.spool_commit_seconds.observe(seconds)
        self.metrics.spool_commit_records.observe(records)
        if self.batcher is not None:
            self._maybe_resume()  # the spool took what it held: there may be room again

    def _register_metrics(self) -> None:
        m = self.metrics
        m.live_counter(
            "gateway_messages_received", "MQTT messages received", lambda: self.mqtt.delivered
        )
        m.live_counter(
            "gateway_readings_received",
            "Readings received (valid or not)",
            lambda: self.ingest.readings_in if self.ingest else 0,
        )
        m.live_counter(
            "gateway_readings_scored", "Readings scored and published", lambda: self.scored
        )
        if self.spooler is not None:
            spool = self.spooler.spool
            m.spool(
                spool.usage,
                lambda: dict(spool.counters),
                lambda: self.spooler.blocked if self.spooler else False,
                lambda: spool.oldest_age(time.time()),
            )
        if self.uplink is not None:
            up = self.uplink
            m.live_counter(
                "gateway_uplink_messages",
                "Messages stored by OCI Streaming",
                lambda: up.sent_messages,
            )
            m.live_counter(
                "gateway_uplink_bytes",
                "Bytes of messages stored by OCI Streaming",
                lambda: up.sent_bytes,
            )
            m.live_counter(
                "gateway_uplink_throttled",
                "Entries refused with 429 (sent again)",
                lambda: up.throttled,
            )
            m.live_counter(
                "gateway_uplink_retries", "Requests tried again after a failure", lambda: up.retries
            )
            m.live_counter(
                "gateway_uplink_summarised_readings",
                "Readings of aggregate lanes sent as aggregate rows",
                lambda: up.summarised_readings,
            )
            m.live_counter(
                "gateway_uplink_aggregate_rows",
                "Aggregate rows stored by OCI Streaming",
                lambda: up.aggregate_rows,
            )
        m.live_counter(
            "gateway_mqtt_held_dropped",
            "QoS 1 publishes (alerts, dead letters) dropped after too many waited for the broker",
            lambda: self.mqtt.held_dropped,
        )
        m.live_counter(
            "gateway_readings_shed",
            "QoS 0 readings dropped because the queue was full",
            lambda: self.shed,
        )

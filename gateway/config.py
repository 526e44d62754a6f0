"""Settings: one typed object from a TOML file and ``EDGEGW_<SECTION>__<KEY>`` variables."""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .errors import ConfigError

__all__ = ["Settings", "load_settings"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewaySection(_Section):
    id: str = Field(default_factory=socket.gethostname, min_length=1, pattern=r"^[^/#+\s]+$")
    site: str = Field(default="default", min_length=1, pattern=r"^[^/#+\s]+$")
    data_dir: Path = Field(default_factory=lambda: _default_data_dir())
    status_interval: float = Field(default=10.0, gt=0, description="seconds between status")


class MqttSection(_Section):
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    client_id: str | None = None  # default: edgegw-<gateway id>
    keepalive: int = Field(default=30, ge=5, le=65535)
    session_expiry: int = Field(default=7 * 86_400, ge=0)  # seconds the broker keeps our queue
    receive_maximum: int = Field(default=2_000, ge=1, le=65_535)
    telemetry_topic: str = "telemetry/#"
    share_group: str | None = None
    subscribe_qos: Literal[0, 1] = 1
    scores_prefix: str = "scores"
    alerts_prefix: str = "alerts"
    reconnect_min: float = Field(default=0.5, gt=0)
    reconnect_max: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> MqttSection:
        if not self.telemetry_topic.endswith("/#"):
            raise ValueError("telemetry_topic must end with '/#' (the machine path follows it)")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must not be below reconnect_min")
        return self


class IngestSection(_Section):
    require_ts: bool = True
    max_readings_per_message: int = Field(default=10_000, ge=1)
    # Readings waiting (for the scorer, or for room in a full block spool lane) before the
    # gateway stops reading from the broker (QoS 1 readings wait there) and sheds QoS 0
    # readings already read; reading resumes at half.
    max_pending: int = Field(default=20_000, ge=2)


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/edge-gateway")
    return Path.home() / ".local" / "state" / "edge-gateway"


class SpoolSection(_Section):
    """The disk queue between scoring and the cloud; sizes accept units ("512MiB")."""

    path: Path | None = None  # default: <gateway.data_dir>/spool.db
    budget: ByteSize = ByteSize(1 << 30)
    durability: Literal["full", "normal", "off"] = "full"
    # Per lane: seconds a record may wait for the cloud, and its share of the budget.
    alerts_ttl: float = Field(default=30 * 86_400, gt=0)
    alerts_share: float = Field(default=0.05, gt=0, le=1)
    scores_ttl: float = Field(default=7 * 86_400, gt=0)
    scores_share: float = Field(default=0.25, gt=0, le=1)
    scores_when_full: Literal["block", "drop_oldest"] = "drop_oldest"
    telemetry_ttl: float = Field(default=7 * 86_400, gt=0)
    telemetry_share: float = Field(default=0.70, gt=0, le=1)
    telemetry_when_full: Literal["block", "drop_oldest"] = "drop_oldest"
    retry: float = Field(default=1.0, gt=0, description="seconds between tries when blocked")
    # At most one commit (one fsync) per interval; acknowledgements wait for it, scores do not.
    commit_interval: float = Field(default=0.01, ge=0, le=1)

    @model_validator(mode="after")
    def _shares(self) -> SpoolSection:
        total = self.alerts_share + self.scores_share + self.telemetry_share
        if total > 1.0 + 1e-9:
            raise ValueError(f"the lanes' shares add up to {total:g}, more than the budget")
        return self


class UplinkSection(_Section):
    """OCI Streaming; an empty endpoint keeps everything in the spool."""

    endpoint: str = ""  # the stream's messages endpoint, https://cell-1.streaming.<region>...
    stream_id: str = ""  # the stream's OCID
    auth: Literal["api_key", "instance_principal"] = "api_key"
    oci_config: Path = Path("~/.oci/config")
    oci_profile: str = "DEFAULT"
    # Bytes a second per partition key (OCI's limit is 1 MB/s per partition): a backlog after
    # an outage drains at this pace instead of as a burst that gets the site throttled.
    rate: ByteSize = ByteSize(800_000)
    retry_min: float = Field(default=1.0, gt=0)
    retry_max: float = Field(default=60.0, gt=0)
    idle: float = Field(default=1.0, gt=0, description="seconds between looks at an empty spool")
    # Seconds scores and telemetry may wait to fill a message (alerts never wait): bigger
    # messages compress far better on a slow link.
    linger: float = Field(default=5.0, ge=0, le=600)
    # Local pre-processing per lane: "all" forwards every reading; "aggregate" forwards, per
    # machine and window of reading time, count/min/mean/max/last of every field (alerts always
    # go in full, with the reading that raised them). The spool keeps full fidelity either way.
    telemetry_forward: Literal["all", "aggregate"] = "all"
    scores_forward: Literal["all", "aggregate"] = "all"
    aggregate_window: float = Field(default=60.0, gt=0, le=86_400, description="seconds")
    # Seconds a window stays open after its end for late readings before it is summarised.
    aggregate_grace: float = Field(default=5.0, ge=0, le=3_600)

    @model_validator(mode="after")
    def _stream(self) -> UplinkSection:
        if self.endpoint and not self.stream_id:
            raise ValueError("stream_id is required when endpoint is set")
        if self.rate <= 0:
            raise ValueError("rate must be positive")
        return self


class ModelSection(_Section):
    """Model delivery: where new versions come from and how they are judged before they serve."""

    # file:///dir, oci://<namespace>/<bucket>/<prefix>, or a PAR URL (https://…/p/…/o/<prefix>/);
    # empty: the bundled default model (or the last good cached one) only.
    source: str = ""
    # Ed25519 public key (PEM) that manifests must be signed with. Required with a source unless
    # allow_unsigned is set (for a lab, never for a plant).
    public_key: Path | None = None
    allow_unsigned: bool = False
    poll_interval: float = Field(default=60.0, ge=1, le=86_400, description="seconds")
    poll_jitter: float = Field(default=0.1, ge=0, le=1, description="fraction of the interval")
    # Object Storage endpoint for oci:// sources; empty: the region's, from the OCI config.
    # OCI identity: uplink.auth, uplink.oci_config, uplink.oci_profile.
    endpoint: str = ""
    timeout: float = Field(default=30.0, gt=0, description="seconds per request")
    cache_dir: Path | None = None  # default: <gateway.data_dir>/models
    keep: int = Field(default=3, ge=1, le=100, description="good versions kept in the cache")
    # Shadow stage: a candidate scores the live batches beside the live model for this many
    # readings and at least this many seconds before it takes over (0 and 0: no shadow stage).
    shadow_readings: int = Field(default=0, ge=0)
    shadow_seconds: float = Field(default=0.0, ge=0)
    # A candidate in shadow is refused if any score is non-finite, falls outside these bounds,
    # or if more than this share of its scores cross its own alert threshold.
    shadow_score_min: float | None = None
    shadow_score_max: float | None = None
    shadow_max_alert_share: float = Field(default=0.5, gt=0, le=1)
    # The live model is rolled back to the previous good version after this many failed calls
    # in a row, or when more than rollback_nonfinite of its last rollback_window scores are
    # NaN or infinite.
    rollback_errors: int = Field(default=3, ge=1)
    rollback_nonfinite: float = Field(default=0.01, ge=0, le=1)
    rollback_window: int = Field(default=1_000, ge=1)

    @model_validator(mode="after")
    def _trust(self) -> ModelSection:
        if self.source and self.public_key is None and not self.allow_unsigned:
            raise ValueError(
                "public_key is required when source is set "
                "(or set allow_unsigned = true to accept unsigned models)"
            )
        if self.source and not self.source.startswith(("file://", "oci://", "https://", "http://")):
            raise ValueError("source must start with file://, oci:// or https:// (a PAR URL)")
        if (
            self.shadow_score_min is not None
            and self.shadow_score_max is not None
            and self.shadow_score_min > self.shadow_score_max
        ):
            raise ValueError("shadow_score_min must not exceed shadow_score_max")
        return self


class BatcherSection(_Section):
    max_batch: int = Field(default=512, ge=1, le=1_000_000)
    queue_delay: float = Field(default=0.0, ge=0, le=10, description="seconds to wait to fill")


class ScoringSection(_Section):
    intra_op_threads: int = Field(default=1, ge=0)
    inter_op_threads: int = Field(default=1, ge=0)
    # Models whose calls take less than this (seconds, moving average) run on the event loop:
    # handing a 15 µs call to a worker thread and back costs more than the call. 0: always a thread.
    inline_below: float = Field(default=0.0005, ge=0, le=0.01)


class HttpSection(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)
    enabled: bool = True


class LogSection(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    """Every setting of the gateway; see README, "Configuration"."""

    model_config = SettingsConfigDict(
        env_prefix="EDGEGW_",
        env_nested_delimiter="__",
        case_sensitive=False,
        extra="forbid",
        frozen=True,
    )

    gateway: GatewaySection = GatewaySection()
    mqtt: MqttSection = MqttSection()
    ingest: IngestSection = IngestSection()
    batcher: BatcherSection = BatcherSection()
    spool: SpoolSection = SpoolSection()
    uplink: UplinkSection = UplinkSection()
    model: ModelSection = ModelSection()
    scoring: ScoringSection = ScoringSection()
    http: HttpSection = HttpSection()
    log: LogSection = LogSection()

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edgegw-{self.gateway.id}"

    @property
    def spool_path(self) -> Path:
        return self.spool.path or self.gateway.data_dir / "spool.db"

    @property
    def model_cache(self) -> Path:
        return self.model.cache_dir or self.gateway.data_dir / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file (init_settings carries the file's values).
        return (env_settings, init_settings)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        env = "EDGEGW_" + "__".join(str(p).upper() for p in err["loc"])
        given = err.get("input")
        shown = "" if isinstance(given, dict) else f" (got {given!r})"
        lines.append(f"  {key} [{env}]: {err['msg']}{shown}")
    return "invalid settings:\n" + "\n".join(lines)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from an optional TOML file, the environment, then keyword overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    data = _merge(data, overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc

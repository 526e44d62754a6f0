"""Edge ML gateway: MQTT telemetry in, ONNX scores and alerts out."""

from .alerts import Alert, AlertTracker
from .app import Gateway
from .batcher import Batch, Batcher
from .config import Settings, load_settings
from .errors import (
    BrokerUnavailable,
    ConfigError,
    GatewayError,
    ModelError,
    RejectedInput,
    TransientError,
)
from .ingest import FeatureMap, Ingest, decode_payload
from .manifest import Bundle, Manifest, default_bundle_dir, load_bundle
from .scoring import Scorer
from .spool import Spool, SpoolFull
from .wireformat import UnsupportedFormat, WireFormatError

__all__ = [
    "Alert",
    "AlertTracker",
    "Batch",
    "Batcher",
    "BrokerUnavailable",
    "Bundle",
    "ConfigError",
    "FeatureMap",
    "Gateway",
    "GatewayError",
    "Ingest",
    "Manifest",
    "ModelError",
    "RejectedInput",
    "Scorer",
    "Settings",
    "Spool",
    "SpoolFull",
    "TransientError",
    "UnsupportedFormat",
    "WireFormatError",
    "decode_payload",
    "default_bundle_dir",
    "load_bundle",
    "load_settings",
]

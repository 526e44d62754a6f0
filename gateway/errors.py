"""Errors, grouped by what the caller should do about them."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A setting is wrong: stop start-up and name the key."""


class RejectedInput(GatewayError):
    """A reading or a payload is malformed: dead-letter it with this reason, keep going."""

    def __init__(self, reason: str, *, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # a short, fixed label for metrics: decode, missing_field, ...


class ModelError(GatewayError):
    """A model bundle cannot be served: refuse it, keep the running model."""


class TransientError(GatewayError):
    """Something outside is unavailable for now (broker, cloud): retry later."""


class BrokerUnavailable(TransientError):
    """The MQTT broker cannot be reached or refused the connection."""

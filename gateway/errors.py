"""Errors, grouped by what the caller should do about them."""

from __future__ import annotations

import logging
from collections.abc import Callable

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential


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


def retrying(
    error: type[TransientError],
    low: float,
    high: float,
    log: logging.Logger,
    what: str,
    on_retry: Callable[[], None] = lambda: None,
) -> AsyncRetrying:
    """The one backoff: retry ``error`` for ever, jittered exponential from ``low`` to ``high``
    seconds, every attempt logged at WARNING."""

    def before_sleep(state: RetryCallState) -> None:
        on_retry()
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s, retrying attempt=%d in=%.2fs error=%s", what, state.attempt_number, delay, exc
        )

    return AsyncRetrying(
        wait=wait_random_exponential(multiplier=low, max=high),
        retry=retry_if_exception_type(error),
        before_sleep=before_sleep,
    )

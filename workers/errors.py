"""How a failure is classified decides what happens to the message and the record."""

from __future__ import annotations


class PoisonInput(Exception):
    """The upload itself is bad (not an image, truncated, bomb, empty, too large): retrying
    cannot help, the image ends FAILED with this message as its readable error."""


class TransientError(Exception):
    """A dependency failed in a way that may heal (timeouts, 5xx, connection refused): the
    message is retried with back-off and the try is not counted against the image."""


class ModelServerUnavailable(TransientError):
    """TorchServe is down, starting, or overloaded: opens the consumer's circuit breaker."""


class RecordMissing(Exception):
    """An original whose image record does not exist: nothing to mark FAILED."""


class LeaseLost(Exception):
    """Another worker holds (or took over) the image: this delivery stops without writing."""

"""How a failure is classified decides what happens to the message and the record."""

from __future__ import annotations


class PoisonInput(Exception):
    """The upload itself is bad (not an image, truncated, bomb, empty, too large): retrying
    cannot help, the image ends FAILED with this message as its readable error."""


class PermanentFailure(Exception):
    """Retrying this message cannot help, though the upload is not at fault (a model version
    TorchServe does not have, a bucket that does not exist): the image is finished with this error
    at once. `dead_letter`: the message is also kept in the DLQ, for an operator to redrive once
    the configuration is fixed."""

    dead_letter = False


class ModelVersionMissing(PermanentFailure):
    """A re-run names a model version TorchServe does not serve (404 on /predictions/<model>/<v>)."""


class BucketMissing(PermanentFailure):
    """The originals or processed bucket does not exist (NoSuchBucket): a deployment problem."""

    dead_letter = True


class TransientError(Exception):
    """A dependency failed in a way that may heal (timeouts, 5xx, connection refused): the
    message is retried with back-off and the try is not counted against the image (the message's
    own tries are bounded by `worker_max_message_tries`)."""


class ModelServerUnavailable(TransientError):
    """TorchServe is down, starting, or overloaded: opens the consumer's circuit breaker if its
    probe confirms it."""


class ModelNotRegistered(TransientError):
    """TorchServe answers but has no default version of the model (404), e.g. while it registers
    it at start: intake pauses for at most `worker_model_missing_grace_seconds`, then such
    messages back off on their own like any transient fault."""


class RecordMissing(Exception):
    """An original whose image record does not exist: nothing to mark FAILED."""


class LeaseLost(Exception):
    """Another worker holds (or took over) the image: this delivery stops without writing."""

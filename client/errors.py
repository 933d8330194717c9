"""ClientError tree mapped from gRPC status codes; torch-free mirror of `prost.errors`."""

from __future__ import annotations


class ClientError(Exception):
    """Base of every error the ProST client raises; `status` is the gRPC status name, e.g. "INVALID_ARGUMENT"."""

    def __init__(self, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class InvalidRequestError(ClientError, ValueError):
    """The server rejected the request (INVALID_ARGUMENT): bad text, video, TOP_K, shape or dtype."""


class NotFoundError(ClientError):
    """A model is not loaded or does not exist (NOT_FOUND)."""


class UnavailableError(ClientError):
    """The server cannot be reached or is not ready (UNAVAILABLE), after the retries."""


class PermissionDeniedError(ClientError):
    """A restricted endpoint (model load/unload) was called without the right repository key."""


class DeadlineError(ClientError, TimeoutError):
    """The call did not finish within the client deadline (DEADLINE_EXCEEDED)."""


class ServerError(ClientError):
    """The server failed while answering (INTERNAL and any other status)."""


_BY_STATUS = {
    "INVALID_ARGUMENT": InvalidRequestError,
    "NOT_FOUND": NotFoundError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": DeadlineError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": PermissionDeniedError,
}


_NO_SERVER = ("failed to connect to all addresses", "Connection refused")


def from_triton(exc: Exception, context: str = "", url: str = "") -> ClientError:
    """Translate a tritonclient InferenceServerException (or grpc.RpcError) into a ClientError; `url` is the
    server's, named when nothing listens there."""
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    if status is None and callable(getattr(exc, "code", None)):  # a raw grpc.RpcError
        status = str(exc.code())
    status = (status or "").rsplit(".", 1)[-1] or None
    message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    message = message or str(exc)
    if status == "UNAVAILABLE" and any(text in message for text in _NO_SERVER):
        return UnavailableError(f"no server at {url or 'that address'}; start one with `prost serve --repository "
                                f"REPOSITORY` or pass --url (PROST_URL) [{message}]", status)
    # Triton answers a restricted protocol without its header with UNAVAILABLE; it is a permission problem.
    if status == "UNAVAILABLE" and "protocol is restricted" in message:
        cls: type[ClientError] = PermissionDeniedError
        if "inference-key" in message:
            message += (" (pass the server's inference key: --inference-key, PROST_INFERENCE_KEY or "
                        "ProstClient(inference_key=...))")
        else:
            message += (" (pass the server's repository key: --repository-key, PROST_REPOSITORY_KEY or "
                        "ProstClient(repository_key=...))")
    elif "Deadline Exceeded" in message:
        cls = DeadlineError
    else:
        cls = _BY_STATUS.get(status or "", ServerError)
    prefix = f"{context}: " if context else ""
    return cls(f"{prefix}{message}", status)

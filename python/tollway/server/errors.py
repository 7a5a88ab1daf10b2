"""HTTP error bodies in the caller's API format, always carrying the request id.

OpenAI format: `{"error": {"message", "type", "param", "code", "request_id"}}`. The
`type` values follow OpenAI's (`invalid_request_error`, `authentication_error`,
`permission_error`, `rate_limit_error`, `server_error`) plus `upstream_error` for failures of
the provider behind the gateway; `code` is tollway's own, stable, snake_case reason.

Anthropic format: `{"type": "error", "error": {"type", "message"}, "request_id"}`, with
Anthropic's type names chosen from the status (`invalid_request_error`, `authentication_error`,
`permission_error`, `not_found_error`, `rate_limit_error`, `timeout_error`, `api_error`,
`overloaded_error`: the names the Anthropic SDK's `ErrorResponse` type accepts).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from tollway.upstream import Failure, FailureKind


@dataclass(frozen=True, slots=True)
class ApiError:
    status: int
    type: str
    code: str
    message: str
    param: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def openai_body(self, request_id: str) -> bytes:
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                    "request_id": request_id,
                }
            }
        )

    def openai_event(self, request_id: str) -> bytes:
        """The same error as a final SSE event, for a stream that has already started."""
        return b"data: " + self.openai_body(request_id) + b"\n\n"

    @property
    def anthropic_type(self) -> str:
        """Anthropic's error type for this error, chosen by status as Anthropic does."""
        match self.status:
            case 401:
                return "authentication_error"
            case 403:
                return "permission_error"
            case 404:
                return "not_found_error"
            case 429:
                return "rate_limit_error"
            case 504:
                return "timeout_error"
            case 529:
                return "overloaded_error"
            case status if status < 500:
                return "invalid_request_error"
            case _:
                return "api_error"

    def anthropic_body(self, request_id: str) -> bytes:
        """The error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}, "request_id"}`."""
        return orjson.dumps(
            {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}, "request_id": request_id}
        )

    def anthropic_event(self, request_id: str) -> bytes:
        """The same error as Anthropic's final `error` stream event, for a stream that has started."""
        return b"event: error\ndata: " + self.anthropic_body(request_id) + b"\n\n"

    def body(self, api: str, request_id: str) -> bytes:
        """The error body in the format of the API the client called (`openai` or `anthropic`)."""
        return self.anthropic_body(request_id) if api == "anthropic" else self.openai_body(request_id)

    def event(self, api: str, request_id: str) -> bytes:
        """The final stream event for this error, in the format of the API the client called."""
        return self.anthropic_event(request_id) if api == "anthropic" else self.openai_event(request_id)


def model_not_allowed(key_name: str, model: str) -> ApiError:
    return ApiError(
        403, "permission_error", "model_not_allowed", f"key `{key_name}` may not use model `{model}`", "model"
    )


def model_not_found(model: str) -> ApiError:
    message = f"model `{model}` does not exist on this gateway; GET /v1/models lists the models you may use"
    return ApiError(404, "invalid_request_error", "model_not_found", message, "model")


def invalid_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, "invalid_request_error", code, message, param)


def from_failure(failure: Failure) -> ApiError:
    """The client-facing error for an upstream failure. A total match: a new kind must be mapped."""
    match failure.kind:
        case FailureKind.UNREACHABLE:
            return ApiError(502, "upstream_error", "upstream_unreachable", failure.message)
        case FailureKind.TIMEOUT:
            return ApiError(504, "upstream_error", "upstream_timeout", failure.message)
        case FailureKind.SERVER_ERROR:
            return ApiError(502, "upstream_error", "upstream_server_error", failure.message)
        case FailureKind.RATE_LIMITED:
            headers = (("retry-after", failure.retry_after),) if failure.retry_after else ()
            return ApiError(429, "rate_limit_error", "upstream_rate_limited", failure.message, headers=headers)
        case FailureKind.CREDENTIALS:
            return ApiError(502, "upstream_error", "upstream_credentials_rejected", failure.message)
        case FailureKind.CLIENT_ERROR:
            status = failure.upstream_status or 400
            return ApiError(status, "invalid_request_error", "upstream_rejected_request", failure.message)
        case FailureKind.BAD_RESPONSE:
            return ApiError(502, "upstream_error", "upstream_bad_response", failure.message)
        case FailureKind.BROKEN_STREAM:
            return ApiError(502, "upstream_error", "upstream_broken_stream", failure.message)
        case FailureKind.CONTEXT_LENGTH:
            return ApiError(400, "invalid_request_error", "context_length_exceeded", failure.message, "messages")

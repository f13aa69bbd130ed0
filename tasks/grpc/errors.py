"""Exceptions of the layers below -> gRPC status codes, the way taskhub.exceptions maps them
to HTTP statuses for REST, so the servicer's methods hold no try/except of their own.

| raised below                                    | gRPC status         | REST |
|-------------------------------------------------|---------------------|------|
| django ValidationError / serializer errors      | INVALID_ARGUMENT    | 400  |
| Http404 (selectors), malformed id               | NOT_FOUND           | 404  |
| taskhub.exceptions.ConflictError                | FAILED_PRECONDITION | 409  |
| taskhub.exceptions.UnprocessableError (an       | FAILED_PRECONDITION | 422  |
|   idempotency key reused with another request)  |                     |      |
| database unreachable, or a transaction that     | UNAVAILABLE         | 503  |
|   lost a race (taskhub/api_errors.py)           |                     |      |
| anything else, other database errors included   | INTERNAL            | 500  |
|   (logged with the traceback)                   |                     |      |

INVALID_ARGUMENT carries a google.rpc.BadRequest with one FieldViolation per message
(`grpc_status.rpc_status.from_call()` on the client), and the same text in the message
for clients that only read that.

While PostgreSQL is down every call that needs it fails alike: the outage is logged once
per process (taskhub/outages.py), not with a traceback per call.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from django.core.exceptions import ValidationError
from django.http import Http404
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from taskhub.exceptions import ConflictError, UnprocessableError
from taskhub.outages import DATABASE, describe, is_database_outage, is_database_retry_later

logger = logging.getLogger("tasks.grpc")

NON_FIELD = "non_field_errors"


class RpcAbort(Exception):
    """End the current RPC with `code`; raised anywhere below a servicer method."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_errors: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field_errors = dict(field_errors or {})


def invalid_argument(field_errors: Mapping[str, Sequence[Any]]) -> RpcAbort:
    errors = {
        field: [str(message) for message in messages] for field, messages in field_errors.items()
    }
    summary = "; ".join(f"{field}: {' '.join(messages)}" for field, messages in errors.items())
    return RpcAbort(
        grpc.StatusCode.INVALID_ARGUMENT, f"Invalid request: {summary}", field_errors=errors
    )


def to_rpc_abort(exc: BaseException) -> RpcAbort:
    """The status a client gets for `exc`."""
    if isinstance(exc, RpcAbort):
        return exc
    if isinstance(exc, ValidationError):
        if hasattr(exc, "error_dict"):
            return invalid_argument(exc.message_dict)
        return invalid_argument({NON_FIELD: exc.messages})
    if isinstance(exc, Http404):
        return RpcAbort(grpc.StatusCode.NOT_FOUND, "No such task.")
    if isinstance(exc, ConflictError | UnprocessableError):
        return RpcAbort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if is_database_outage(exc):
        DATABASE.failed(exc, "gRPC calls that need it answer UNAVAILABLE")
        return RpcAbort(grpc.StatusCode.UNAVAILABLE, "The database is unavailable; try again.")
    if is_database_retry_later(exc):  # a serialization failure or deadlock: rare, a line each
        logger.warning("gRPC call answered UNAVAILABLE: %s", describe(exc))
        return RpcAbort(
            grpc.StatusCode.UNAVAILABLE,
            "The request met a concurrent change and was rolled back; try again.",
        )
    logger.error("gRPC call failed", exc_info=exc)
    return RpcAbort(grpc.StatusCode.INTERNAL, "Internal server error.")


def abort(context: grpc.ServicerContext, failure: RpcAbort) -> None:
    """End the RPC with `failure` (raises, as grpc's abort always does)."""
    if not failure.field_errors:
        context.abort(failure.code, failure.message)
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field, description=message)
            for field, messages in failure.field_errors.items()
            for message in messages
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    context.abort_with_status(
        rpc_status.to_status(
            status_pb2.Status(
                code=getattr(code_pb2, failure.code.name),
                message=failure.message,
                details=[detail],
            )
        )
    )

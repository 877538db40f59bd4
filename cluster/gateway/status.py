"""Errors to gRPC status codes, in one place: a `SwitchyardError` carries its code (`cluster.errors`);
anything else is INTERNAL, logged with a request id that the caller sees.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from switchyard.cluster.errors import SwitchyardError

log = logging.getLogger(__name__)


def code_of(error: BaseException) -> grpc.StatusCode:
    """The status code a call that raised `error` ends with (INTERNAL for anything unexpected)."""
    if isinstance(error, SwitchyardError):
        return grpc.StatusCode[error.status]
    if isinstance(error, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    if isinstance(error, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message of an exception raised while serving a call (INTERNAL: logged)."""
    code = code_of(error)
    if code is not grpc.StatusCode.INTERNAL:
        return code, str(error) or ("timed out" if code is grpc.StatusCode.DEADLINE_EXCEEDED else code.name)
    request_id = uuid.uuid4().hex[:12]
    log.error("internal error, request id %s", request_id, exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id}; see the gateway log)"


def guarded(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A unary handler whose exceptions end the call with `status_of`'s code."""

    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except Exception as error:  # noqa: BLE001 - every failure ends the call with its status code
            if isinstance(error, grpc.aio.AbortError):
                raise
            await context.abort(*status_of(error))

    handler.__name__ = method.__name__
    return handler

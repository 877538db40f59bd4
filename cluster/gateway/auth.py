"""Bearer-token auth of the gateway: a server interceptor; health probes need no token."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health

from switchyard.protos.generated import serving_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Switchyard"].full_name
ADMIN_METHODS = frozenset({f"/{SERVICE_NAME}/Rebalance", f"/{SERVICE_NAME}/Rollback"})
OPEN_PREFIXES = (f"/{health.SERVICE_NAME}/",)  # probes need no token


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer-token checks: UNAUTHENTICATED without a valid token, PERMISSION_DENIED for admin calls."""

    def __init__(self, token: str | None, admin_token: str | None) -> None:
        self.token, self.admin_token = token, admin_token

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        handler = await continuation(details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        metadata = dict(details.invocation_metadata or ())
        header = metadata.get("authorization", "")
        given = header[len("Bearer "):] if header.startswith("Bearer ") else None
        is_admin = given is not None and self.admin_token is not None and hmac.compare_digest(given, self.admin_token)
        is_user = given is not None and self.token is not None and hmac.compare_digest(given, self.token)
        if method in ADMIN_METHODS and self.admin_token is not None:
            if is_admin:
                return handler
            if is_user or (self.token is None and given is not None):
                return _refusal(handler, grpc.StatusCode.PERMISSION_DENIED, f"{method} needs the admin token")
            return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                            f"{method} needs 'authorization: Bearer <admin token>' metadata")
        if self.token is None or is_user or is_admin:
            return handler
        return _refusal(handler, grpc.StatusCode.UNAUTHENTICATED,
                        "missing or wrong token: send 'authorization: Bearer <token>' metadata")


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with `code`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises

    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kwargs)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **kwargs)

"""Undecodable request bytes are the caller's fault: INVALID_ARGUMENT, not gRPC's UNKNOWN.

gRPC ends a call whose request its deserializer cannot parse with UNKNOWN ("Exception
deserializing request!"), which tells a client nothing and counts as a server error. `StrictDecoding`
wraps the Switchyard service's handlers: the deserializer hands back an `_Undecodable` marker
instead of raising, and the handler ends such a call with INVALID_ARGUMENT naming the message type.
Bytes that do parse (protobuf accepts many short strings as a message with default fields) reach
the servicer, which is why every default request field means the harmless thing (a Rebalance
without `apply` is a dry run).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from switchyard.cluster.gateway.auth import SERVICE_NAME


@dataclass(frozen=True)
class _Undecodable:
    """A request whose bytes did not parse: why."""

    reason: str


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and anything else a parser raises
            return _Undecodable(f"{type(error).__name__}: {error}")

    return deserialize


async def _refuse(request: _Undecodable, context: grpc.aio.ServicerContext, method: str) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                        f"the request is not a valid {method} request message ({request.reason})")


class StrictDecoding(grpc.aio.ServerInterceptor):
    """Ends calls of the Switchyard service whose request bytes do not parse with INVALID_ARGUMENT."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        kwargs = {"request_deserializer": _tolerant(handler.request_deserializer),
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Undecodable):
                    return await _refuse(request, context, method)
                return await behavior(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        assert handler.unary_stream, "the Switchyard service has unary and server-streaming methods only"
        stream_behavior = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await _refuse(request, context, method)
                return
            async for response in stream_behavior(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)

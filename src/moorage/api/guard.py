"""What every RPC goes through: a request id in the log context, metrics, and the one place where
:class:`~moorage.errors.MoorageError` becomes a gRPC status. :mod:`moorage.api.dispatch` wraps every RPC's
method in :func:`unary` or :func:`server_stream`.

An exception that is not a MoorageError is a bug: it is logged with its traceback and answered INTERNAL
with the request id, so the daemon keeps serving and the log line can be found.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog

from moorage.errors import MoorageError
from moorage.observe import metrics

log = structlog.get_logger(__name__)

Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


def unary(method: str, behavior: Behavior) -> Behavior:
    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        started = _begin(method)
        code = grpc.StatusCode.OK
        try:
            return await behavior(request, context)
        except MoorageError as exc:
            code = exc.grpc_code
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            await _internal(context, method, exc)
        finally:
            _end(method, code, started)

    return run


def server_stream(method: str, behavior: Behavior) -> Behavior:
    async def run(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        started = _begin(method)
        code = grpc.StatusCode.OK
        try:
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:
                await result
        except MoorageError as exc:
            code = exc.grpc_code
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code = grpc.StatusCode.INTERNAL
            await _internal(context, method, exc)
        finally:
            _end(method, code, started)

    return run


def _begin(method: str) -> float:
    structlog.contextvars.bind_contextvars(rpc=method, request_id=os.urandom(6).hex())
    return time.monotonic()


def _end(method: str, code: grpc.StatusCode, started: float) -> None:
    elapsed = time.monotonic() - started
    metrics.observe_rpc(method, code.name, elapsed)
    log.debug("rpc done", code=code.name, seconds=round(elapsed, 6))
    structlog.contextvars.clear_contextvars()


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: MoorageError) -> None:
    log.info("rpc failed", code=exc.grpc_code.name, error=exc.message)
    await context.abort(exc.grpc_code, exc.message)


async def _internal(context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
    request_id = structlog.contextvars.get_contextvars().get("request_id", "?")
    log.error("rpc crashed", exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL,
        f"internal error in {method} (request {request_id}): {type(exc).__name__}: {exc}",
    )

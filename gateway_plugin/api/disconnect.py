"""Work for a client that may leave: cancelled when it does, as Starlette does not do by itself.

A handler keeps running after its client disconnected; for a batch, a parallel fan-out or a
pipeline that is minutes of node calls (and an admission place) spent on an answer nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import Receive

from gateway_plugin.errors import DistinferError

__all__ = ["ClientLeft", "unless_disconnected"]

T = TypeVar("T")


class ClientLeft(DistinferError):
    """The client disconnected before its answer was ready; the answer is never read (nginx's 499)."""

    status, code, title = 499, "client_closed_request", "Client closed request"


async def unless_disconnected(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled and ClientLeft raised.

    Call it once the body is read: the next message a server gives is then `http.disconnect`, sent
    when the client leaves (or once the response is complete).
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()  # the client left, or we are cancelled ourselves
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(task, return_exceptions=True)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientLeft("the client disconnected before the answer was ready")
    return task.result()


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has left; waits for ever when the next message says nothing of it.

    One message only (two after an empty body: a GET's, unread): a host's middleware may hand the
    app a `receive` that replays the body on every call (a loop on it would never yield) or that
    raises once the body is read. Not knowing is no reason to cancel anyone's work.
    """
    try:
        message = await receive()
        if message.get("type") == "http.request" and not message.get("body") and not message.get("more_body"):
            message = await receive()  # a GET's empty body, which nobody read: the next one tells
    except Exception:
        message = {}
    if message.get("type") != "http.disconnect":
        await asyncio.Event().wait()

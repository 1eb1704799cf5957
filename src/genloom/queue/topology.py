"""The queues of one served model, and how they are declared: quorum queues with a delivery limit, an urgent
queue consumed first, a dead-letter queue.

Per model ``m``::

    genloom.m          requests (normal priority)
    genloom.m.urgent   requests with priority "high": the worker takes them before any normal request it holds
    genloom.m.dead     dead letters: invalid requests, retries used up, poison messages

**Quorum queues by default** (``--queue-type quorum``): replicated, durable, and they count deliveries. Each
request queue has ``x-delivery-limit`` = ``delivery_limit - 1``: a message that was delivered
``delivery_limit`` times without an ack (its worker process died each time, or lost its connection) is moved
by the broker to ``genloom.m.dead`` instead of crash-looping the pool. The worker does better than the broker
when it can: on a message's last allowed delivery, if the supervisor saw that very message kill the previous
worker process, it dead-letters it itself and answers the client with ``code: "redelivered"`` (the broker's
own dead-lettering sends nothing to the client).

**Priorities: a second queue, not ``x-max-priority``.** RabbitMQ 3.10's quorum queues have no priorities (they
came in 4.0), and classic priority queues give up replication and the delivery limit. Two quorum queues keep
both; the worker gives each consumer its own prefetch window (so urgent messages are delivered at once even
while normal ones fill their window) and runs urgent requests before every normal request it holds. The cost:
the priority is strict per worker (a flood of urgent work starves normal work), and between queues there is
no global order. ``genloom submit --priority high`` / ``QueueClient.request(..., priority="high")`` publish
to the urgent queue.

**Migrating from classic queues** (genloom ≤ 0.1 declared ``genloom.m`` as a classic queue): a queue's type
cannot change, and redeclaring it as quorum fails with PRECONDITION_FAILED. ``genloom worker`` then stops with
one line naming the fix: let the old workers drain the queue (``genloom queue status m`` shows 0 ready and 0
unacked), delete it (``rabbitmqctl delete_queue genloom.m``; also ``genloom.m.dead`` after reading its
dead letters) and start the new workers — or keep the classic queues with ``--queue-type classic``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiormq

from genloom.errors import GenloomError
from genloom.queue import messages as m

QUEUE_TYPES = ("quorum", "classic")
PRIORITIES = ("normal", "high")
URGENT_SUFFIX = ".urgent"
H_DELIVERY_COUNT = "x-delivery-count"  # set by quorum queues on redelivery: deliveries before this one


def urgent_queue(model: str) -> str:
    return m.queue_name(model) + URGENT_SUFFIX


def request_queues(model: str) -> tuple[str, str]:
    """(normal, urgent) request queues of ``model``."""
    return m.queue_name(model), urgent_queue(model)


def queue_for(model: str, priority: str = "normal") -> str:
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    return urgent_queue(model) if priority == "high" else m.queue_name(model)


def all_queues(model: str) -> tuple[str, str, str]:
    return m.queue_name(model), urgent_queue(model), m.dead_letter_queue(model)


@dataclass(frozen=True)
class Topology:
    queue_type: str = "quorum"
    delivery_limit: int = 5  # deliveries of one message before it is dead-lettered (quorum queues)

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ValueError(f"--queue-type must be one of {', '.join(QUEUE_TYPES)}, got {self.queue_type!r}")
        if self.delivery_limit < 1:
            raise ValueError(f"--delivery-limit must be ≥ 1, got {self.delivery_limit}")

    def arguments(self, model: str, *, dead: bool = False) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        if not dead:
            args.update({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": m.dead_letter_queue(model)})
            if self.queue_type == "quorum":
                args["x-delivery-limit"] = self.delivery_limit - 1  # returned more often than this → dead letter
        return args

    async def declare(self, channel: Any, model: str) -> None:
        """Declare the dead-letter queue and both request queues of ``model`` on an aio-pika channel.
        A queue that exists with another type or arguments raises GenloomError with the fix."""
        for name, dead in ((m.dead_letter_queue(model), True), (m.queue_name(model), False),
                           (urgent_queue(model), False)):
            try:
                await channel.declare_queue(name, durable=True, arguments=self.arguments(model, dead=dead))
            except aiormq.exceptions.ChannelPreconditionFailed as e:
                raise GenloomError(precondition_message(name, str(e), self.queue_type)) from None


def precondition_message(queue: str, detail: str, wanted: str) -> str:
    """One line for PRECONDITION_FAILED on declare: which queue, what differs, how to fix it."""
    detail = " ".join(detail.split())
    if "'x-queue-type'" in detail:
        cur = re.search(r"but current is (?:the value )?'(\w+)'", detail)
        current = cur.group(1) if cur else "classic"  # "current is none": declared without a type = classic
        if current != wanted:
            return (f"queue {queue} already exists as a {current} queue (declared by an older genloom or by hand) "
                    f"and a queue's type cannot change; drain it (`genloom queue status` shows 0 ready, 0 unacked),"
                    f" then `rabbitmqctl delete_queue {queue}` and start again — or run the workers with "
                    f"--queue-type {current}")
    arg = re.search(r"inequivalent arg '([^']+)'", detail)
    what = f"its {arg.group(1)} differs" if arg else "its settings differ"
    return (f"queue {queue} already exists and {what} ({detail}); delete it (`rabbitmqctl delete_queue {queue}`) "
            f"after draining it, or start the workers with the settings it was declared with "
            f"(--queue-type/--delivery-limit)")


def delivery_count(headers: dict[str, Any] | None, redelivered: bool) -> int:
    """Deliveries of a message before this one: the quorum queue's ``x-delivery-count`` header, else (classic
    queues) 1 when the broker flags it redelivered."""
    n = (headers or {}).get(H_DELIVERY_COUNT)
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    return 1 if redelivered else 0

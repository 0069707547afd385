from __future__ import annotations

import asyncio

import pytest

from moorage.state.events import CREATED, STARTED, Event, EventBus, Overflow


def test_subscribers_get_events_in_order_and_leave() -> None:
    async def scenario() -> None:
        bus = EventBus()
        with bus.subscribe() as a, bus.subscribe() as b:
            bus.publish(Event(CREATED, "c1", "p1", 1))
            bus.publish(Event(STARTED, "c1", "p1", 2))
            assert [await a.next(), await a.next()] == [Event(CREATED, "c1", "p1", 1), Event(STARTED, "c1", "p1", 2)]
            assert (await b.next()).kind == CREATED
        assert len(bus) == 0
        bus.publish(Event(CREATED, "c2", "p1", 3))  # nobody listens: dropped

    asyncio.run(scenario())


def test_a_subscriber_that_falls_behind_is_cut_off() -> None:
    async def scenario() -> None:
        bus = EventBus(backlog=4)
        with bus.subscribe() as slow, bus.subscribe() as fast:
            for i in range(10):
                bus.publish(Event(CREATED, f"c{i}", "p", i))
                await fast.next()
            assert len(bus) == 1  # only the fast one is still subscribed
            for _ in range(3):
                await slow.next()
            with pytest.raises(Overflow, match="more than 4 events behind"):
                await slow.next()

    asyncio.run(scenario())

"""Simulation support: an asyncio event loop on a :class:`~p2pnet.clock.VirtualClock`."""

from p2pnet.sim.loop import VirtualTimeEventLoop, run_virtual

__all__ = ["VirtualTimeEventLoop", "run_virtual"]

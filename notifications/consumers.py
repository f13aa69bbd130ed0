"""Placeholder consumer: replaced by the real-time work (issue 3)."""

from __future__ import annotations

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class EventConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        await self.close(code=4401)

"""The query service's background loops wait for NOTIFY when idle: the generation supervisor
polls only while a rebuild catches up or its listener is down."""

from __future__ import annotations

from services.query.notify import Notifications
from services.query.settings import QuerySettings
from services.query.supervisor import GenerationSupervisor


def test_the_supervisor_polls_only_while_it_must() -> None:
    settings = QuerySettings(generation_poll_s=0.5, generation_idle_poll_s=30.0)
    notifications = Notifications()
    supervisor = GenerationSupervisor(settings, notifications)
    assert supervisor._pause() == 0.5, "no listener yet: poll"
    notifications.listening = True
    assert supervisor._pause() == 30.0, "listening, nothing building: the NOTIFY wakes it"
    supervisor.building = True
    assert supervisor._pause() == 0.5, "a rebuild's switch is polled for"

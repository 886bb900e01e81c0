"""The web view's event hub: how many streams one peer and everyone may hold open."""

from __future__ import annotations

from pathlib import Path

from cellctl.cell import load_cell
from cellctl.web.events import MAX_STREAMS, MAX_STREAMS_PER_PEER, Hub

DEMO = load_cell(Path(__file__).resolve().parent.parent / "recipes" / "demo" / "cell.yaml")


def test_one_peer_cannot_take_every_place() -> None:
    hub = Hub(DEMO)
    mine = [hub.subscribe(f"s{i}", "10.0.0.9") for i in range(MAX_STREAMS_PER_PEER)]
    assert all(s is not None for s in mine)
    assert hub.subscribe("one-more", "10.0.0.9") is None  # that peer's share is taken
    assert hub.subscribe("other", "10.0.0.8") is not None  # anyone else still gets in
    first = mine[0]
    assert first is not None
    hub.unsubscribe(first)
    assert hub.subscribe("again", "10.0.0.9") is not None  # a place freed is a place


def test_the_hub_holds_at_most_max_streams() -> None:
    hub = Hub(DEMO)
    for index in range(MAX_STREAMS):
        assert hub.subscribe(f"s{index}", f"10.0.{index // 200}.{index % 200}") is not None
    assert hub.subscribe("late", "10.9.9.9") is None
    assert hub.streams == MAX_STREAMS

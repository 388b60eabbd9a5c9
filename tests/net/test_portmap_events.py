"""What the node says about its port mappings (pyphase.net.dht.PortMapping), fed as libtorrent's alerts
would feed it: obtained once per transport (refreshes are quiet), lost when a held mapping fails, failed
once per error when none was held; the external address is the router's IP with the mapped port."""

from __future__ import annotations

from pyphase.net.dht import PortMapping


def test_obtained_refreshed_lost_and_failed() -> None:
    events: list[tuple[str, dict]] = []
    m = PortMapping(lambda name, **fields: events.append((name, fields)))
    m.requested[2] = ("phase/1", "tcp", 7465)
    m.requested[3] = ("record-query", "udp", 7465)
    assert m.external() is None
    m.failed("upnp", 2, "no router")
    m.failed("upnp", 2, "no router")
    assert [e[0] for e in events] == ["port_mapping_failed"]
    m.external_ip = "198.18.0.11"
    m.obtained("natpmp", 2, "tcp", 40000)
    m.obtained("natpmp", 2, "tcp", 40000)  # a refresh: nothing new
    m.obtained("natpmp", 3, "udp", 40000)
    m.obtained("upnp", 1, "udp", 7467)  # a mapping libtorrent made for its own socket: the DHT's
    names = [e[0] for e in events]
    assert names.count("port_mapping_obtained") == 3
    first = events[1][1]
    assert first == {
        "what": "phase/1",
        "protocol": "tcp",
        "local_port": 7465,
        "external": "198.18.0.11:40000",
        "transport": "natpmp",
    }
    assert events[-1][1]["what"] == "dht"
    assert m.external() == "198.18.0.11:40000"
    assert m.external("record-query", "udp") == "198.18.0.11:40000"
    events.clear()
    m.failed("natpmp", 2, "lease not renewed")
    assert events == [
        (
            "port_mapping_lost",
            {
                "what": "phase/1",
                "protocol": "tcp",
                "external_port": 40000,
                "transport": "natpmp",
                "error": "lease not renewed",
            },
        )
    ]
    assert m.external() is None and m.external("record-query", "udp") is not None

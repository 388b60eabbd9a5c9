"""Phase's peer layer, both ends of ``phase/1``: the client, the wire codec, the node and its module cache,
addresses and SOCKS proxies, LAN discovery.

Users want :class:`pyphase.Client` (``pyphase/net/client.py``) and the ``plasmd`` daemon (``pyphase/daemon.py``);
``docs/NETWORK.md`` describes the protocol.
"""

"""Phase's peer layer: the ``phase/1`` wire codec, the node, its module cache and executors, LAN discovery.

Users want :class:`pyphase.Client` (``pyphase/client.py``) and the ``plasmd`` daemon (``pyphase/daemon.py``);
``docs/NETWORK.md`` describes the protocol.
"""

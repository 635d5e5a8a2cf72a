"""Network backends of the serial line: telnet (character mode) and raw TCP.

Each connection is a hub client: it delivers output through its own bounded `OutputBuffer`
and hands input to the hub. The console core never knows which backend a byte came from.
"""

from __future__ import annotations

from twisted.internet import protocol

from xenconsole.outbuf import OutputBuffer, flusher
from xenconsole.telnet_codec import TelnetCodec, escape


class RawClient(protocol.Protocol):
    """Raw TCP: bytes both ways, no negotiation."""

    kind = "tcp"

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.name = f"{self.kind}:{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        try:
            self.transport.setTcpKeepAlive(True)
        except AttributeError:
            pass
        self.out = OutputBuffer(
            self.transport.write, self.factory.buffer_limit, flusher(self.transport)
        )
        self.transport.registerProducer(self.out, True)
        self.setup()
        self.factory.hub.attach(self)

    def setup(self) -> None:
        pass

    def deliver(self, data: bytes) -> None:
        self.out.deliver(data)

    def dataReceived(self, data: bytes) -> None:
        self.factory.hub.receive(data)

    def connectionLost(self, reason=None) -> None:
        self.out.stopProducing()
        self.factory.hub.detach(self)


class TelnetClient(RawClient):
    """Telnet in character mode (WILL ECHO, WILL SGA, DO NAWS); raw clients work too."""

    kind = "telnet"

    def setup(self) -> None:
        hub = self.factory.hub
        self.codec = TelnetCodec(
            # Replies go through the client's buffer: bounded if the client never reads.
            send=self.out.send_control,
            on_data=hub.receive,
            on_break=lambda: hub.on_break(self),
        )
        self.codec.start()

    def deliver(self, data: bytes) -> None:
        self.out.deliver(escape(data))

    def dataReceived(self, data: bytes) -> None:
        self.codec.feed(data)


class ConsoleFactory(protocol.ServerFactory):
    def __init__(self, hub, client_class: type[RawClient], buffer_limit: int) -> None:
        self.hub = hub
        self.protocol = client_class
        self.buffer_limit = buffer_limit

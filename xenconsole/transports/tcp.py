"""Raw TCP: bytes both ways, no negotiation (`--tcp`, `socket://HOST:PORT`).

Server side: each connection is a hub client that delivers output through its own bounded
`OutputBuffer` and hands input to the hub; the console core never knows which transport a
byte came from. Client side: `SocketLink`. The telnet transport builds on both.
"""

from __future__ import annotations

import socket
import threading

from twisted.internet import protocol

from xenconsole.clientlink import Link, LinkError, hostport
from xenconsole.hub import Hub, Listener
from xenconsole.options import Address
from xenconsole.outbuf import DEFAULT_LIMIT, OutputBuffer, flusher


def open_output(client: protocol.Protocol, buffer_limit: int) -> OutputBuffer:
    """For a new TCP connection: its name (`KIND:HOST:PORT`), keepalive, and its bounded
    output buffer, registered as the connection's producer."""
    transport = client.transport
    peer = transport.getPeer()
    client.name = f"{client.kind}:{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
    try:
        transport.setTcpKeepAlive(True)
    except AttributeError:
        pass
    out = OutputBuffer(transport.write, buffer_limit, flusher(transport))
    transport.registerProducer(out, True)
    return out


class RawClient(protocol.Protocol):
    """Raw TCP: bytes both ways, no negotiation."""

    kind = "tcp"

    def connectionMade(self) -> None:
        self.out = open_output(self, self.factory.buffer_limit)
        self.setup()
        self.factory.hub.attach(self)

    def setup(self) -> None:
        pass

    def deliver(self, data: bytes) -> None:
        self.out.deliver(data)

    def dataReceived(self, data: bytes) -> None:
        self.factory.hub.receive(data, self)

    def connectionLost(self, reason=None) -> None:
        self.out.stopProducing()
        self.factory.hub.detach(self)


class ConsoleFactory(protocol.ServerFactory):
    def __init__(self, hub, client_class: type[RawClient], buffer_limit: int) -> None:
        self.hub = hub
        self.protocol = client_class
        self.buffer_limit = buffer_limit


def listen_tcp(reactor, addr: Address, factory: protocol.ServerFactory) -> Listener:
    """Listen on `addr` (port 0: any free one); CannotListenError if it cannot."""
    port = reactor.listenTCP(addr.port, factory, interface=addr.host)
    return Listener(f"{addr.host}:{port.getHost().port}", port.stopListening)


def listen(reactor, hub: Hub, addr: Address) -> Listener:
    return listen_tcp(reactor, addr, ConsoleFactory(hub, RawClient, DEFAULT_LIMIT))


class SocketLink(Link):
    """`socket://HOST:PORT`: raw TCP, bytes both ways."""

    scheme = "socket://"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            self.sock = self._connect(url)
        except OSError as e:
            raise LinkError(f"cannot connect to {url}: {e.strerror or e}") from None
        self._wlock = threading.Lock()

    def _connect(self, url: str) -> socket.socket:
        """The connected socket (a stream socket of another family: override this)."""
        sock = socket.create_connection(hostport(url), timeout=10)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _read(self) -> bytes | None:
        data = self.sock.recv(65536)
        return data or None

    def _send(self, data: bytes) -> None:
        with self._wlock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the reader notices the end and reports it once

    def write(self, data: bytes) -> None:
        self._send(data)

    def close(self) -> None:
        super().close()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

"""Telnet in character mode (`--telnet`, `telnet://HOST:PORT`): both ends of one codec.

The server side asks for character mode (WILL ECHO, WILL SGA) and the window size (DO NAWS);
raw TCP clients work too. The client side (`TelnetLink`) is what `xenconsole connect` and
`xenconsole.expect` speak: negotiation, IAC doubling and CR NUL never reach the application.
Both are `xenconsole.telnet_codec.TelnetCodec`, in its server and client roles.
"""

from __future__ import annotations

from xenconsole.hub import Hub, Listener
from xenconsole.options import Address
from xenconsole.outbuf import DEFAULT_LIMIT
from xenconsole.telnet_codec import CLIENT, SERVER, TelnetCodec, escape
from xenconsole.transports.tcp import ConsoleFactory, RawClient, SocketLink, listen_tcp

DEFAULT_ADDRESS = "127.0.0.1:4555"


class TelnetClient(RawClient):
    """One telnet connection to the console (the server's side of it)."""

    kind = "telnet"

    def setup(self) -> None:
        hub = self.factory.hub
        self.codec = TelnetCodec(
            # Replies go through the client's buffer: bounded if the client never reads.
            send=self.out.send_control,
            on_data=lambda data: hub.receive(data, self),
            on_break=lambda: hub.on_break(self),
            role=SERVER,
            on_ayt=lambda: hub.who_text(self),  # telnet's `send ayt`, connect's menu `w`
        )
        self.codec.start()

    def deliver(self, data: bytes) -> None:
        self.out.deliver(escape(data))

    def dataReceived(self, data: bytes) -> None:
        self.codec.feed(data)


def listen(reactor, hub: Hub, addr: Address) -> Listener:
    return listen_tcp(reactor, addr, ConsoleFactory(hub, TelnetClient, DEFAULT_LIMIT))


class TelnetLink(SocketLink):
    """`telnet://HOST:PORT`: a character-mode telnet client with NAWS and BREAK."""

    scheme = "telnet://"
    can_break = True

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._got: list[bytes] = []
        self.codec = TelnetCodec(send=self._send, on_data=self._got.append, role=CLIENT)

    def _read(self) -> bytes | None:
        data = self.sock.recv(65536)
        if not data:
            return None
        self.codec.feed(data)  # answers go out from this thread, under the write lock
        out = b"".join(self._got)
        self._got.clear()
        return out

    def write(self, data: bytes) -> None:
        self._send(self.codec.encode(data))

    def send_break(self) -> None:
        self.codec.send_break()

    def send_who(self) -> None:
        self.codec.send_ayt()

    def set_size(self, cols: int, rows: int) -> None:
        self.codec.set_window(cols, rows)

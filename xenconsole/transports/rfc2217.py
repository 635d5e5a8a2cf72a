"""RFC 2217 (`--rfc2217`, `rfc2217://HOST:PORT`): the serial line as pyserial sees a COM port.

The protocol is pyserial's own server side (`serial.rfc2217.PortManager`: option negotiation
and every COM-PORT option) run inside a Twisted protocol, with its input parser replaced by a
bounded one that survives any bytes. The "port" it manages is `EmulatedUart`, a
`serial.SerialBase` that stores the line settings the client asks for and reports them back,
answers modem lines as a connected null-modem cable would (CTS, DSR, CD up, no RING), and turns
a BREAK into a hub break event. Xen's ns16550 driver ignores a received break, so the console
itself does nothing with it; `--log-events` records it.
"""

from __future__ import annotations

import struct

import serial
from serial import rfc2217
from twisted.internet import protocol

from xenconsole.clientlink import SerialLink, hostport
from xenconsole.hub import Hub, Listener
from xenconsole.options import Address
from xenconsole.outbuf import DEFAULT_LIMIT, OutputBuffer
from xenconsole.transports.tcp import listen_tcp, open_output

# A subnegotiation longer than this is not RFC 2217 (the longest, SET-BAUDRATE, is 6 bytes);
# PortManager would buffer it without bound, so it is discarded.
SB_MAX = 64
# A client joins the line once its port is open: pyserial's open() ends by purging its
# receive and then its transmit buffer, and drops whatever arrived before; output sent during
# negotiation (the whole boot, when the host powers on at the first client) would be lost.
# Clients that never purge join at their first keystroke or after this many seconds.
ATTACH_FALLBACK = 1.0


class EmulatedUart(serial.SerialBase):
    """The COM port behind one RFC 2217 connection: settings are stored, never enforced."""

    def __init__(self, on_break=lambda: None) -> None:
        super().__init__()
        self._on_break = on_break
        self.breaks = 0
        self.purges = 0
        self.transmit_purged = False
        self.settings_changes = 0
        # The property setters only call the _update_* hooks of an open port.
        self.is_open = True

    # SerialBase hooks that PortManager drives through the property setters.
    def _reconfigure_port(self) -> None:
        self.settings_changes += 1

    def _update_break_state(self) -> None:
        if self._break_state:
            self.breaks += 1
            self._on_break()

    def _update_dtr_state(self) -> None:
        pass  # a console has no modem to hang up: DTR is remembered and reported only

    def _update_rts_state(self) -> None:
        pass  # no hardware flow control on an emulated line

    def reset_input_buffer(self) -> None:
        # Input goes to the machine as it arrives; there is nothing queued to purge.
        self.purges += 1

    def reset_output_buffer(self) -> None:
        self.purges += 1
        self.transmit_purged = True

    # Modem status: the other end of a null-modem cable with a live host on it.
    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True


_IAC, _SB, _SE = 255, 250, 240
_NEGOTIATION = frozenset((251, 252, 253, 254))  # WILL WONT DO DONT


class _PortManager(rfc2217.PortManager):
    """pyserial's PortManager with its input state machine rewritten for hostile input.

    The original buffers a subnegotiation without bound, raises TypeError on a stray
    `IAC SE` (which drops the connection), lets malformed option values escape as exceptions,
    and yields one byte at a time. Negotiation and the COM-PORT options stay pyserial's.
    """

    oversized = 0
    _discard = False

    def filter(self, data: bytes):
        """Yield runs of application bytes; handle telnet commands on the way."""
        run = bytearray()
        for b in data:
            mode = self.mode
            if mode == rfc2217.M_NORMAL:
                if b == _IAC:
                    self.mode = rfc2217.M_IAC_SEEN
                elif self.suboption is None:
                    run.append(b)
                else:
                    self._sb_append(b)
            elif mode == rfc2217.M_IAC_SEEN:
                self.mode = rfc2217.M_NORMAL
                if b == _IAC:
                    if self.suboption is None:
                        run.append(b)
                    else:
                        self._sb_append(b)
                elif b == _SB:
                    self.suboption = bytearray()
                    self._discard = False
                elif b == _SE:
                    if self.suboption is not None:  # a stray SE is ignored
                        sub, self.suboption = bytes(self.suboption), None
                        if run:
                            yield bytes(run)
                            run.clear()
                        self._telnet_process_subnegotiation(sub)
                elif b in _NEGOTIATION:
                    self.telnet_command = bytes([b])
                    self.mode = rfc2217.M_NEGOTIATE
                else:
                    self._telnet_process_command(bytes([b]))
            else:  # M_NEGOTIATE: the option byte
                self.mode = rfc2217.M_NORMAL
                self._telnet_negotiate_option(self.telnet_command, bytes([b]))
        if run:
            yield bytes(run)

    def _telnet_process_command(self, command: bytes) -> None:
        # A plain telnet client on this port sends BREAK as IAC BRK: same as the COM-PORT one.
        if command == b"\xf3":
            self.serial.breaks += 1
            self.serial._on_break()

    def _sb_append(self, b: int) -> None:
        if len(self.suboption) < SB_MAX:
            self.suboption.append(b)
        elif not self._discard:
            # Keep waiting for IAC SE but store nothing more; drop it when it comes.
            self._discard = True
            self.oversized += 1

    def _telnet_process_subnegotiation(self, suboption: bytes) -> None:
        if self._discard:
            self._discard = False
            return
        if not suboption:
            return
        try:
            super()._telnet_process_subnegotiation(suboption)
        except (struct.error, ValueError, KeyError, TypeError, IndexError, OverflowError):
            # A truncated or out-of-range option: ignore it, as a port server should, and
            # keep the session.
            pass


class _Conn:
    """The `connection` PortManager writes its answers to: the client's bounded control queue,
    so a client that floods requests and never reads the answers cannot grow our memory."""

    def __init__(self, out: OutputBuffer) -> None:
        self.write = out.send_control


class RFC2217Client(protocol.Protocol):
    kind = "rfc2217"
    attached = False

    def connectionMade(self) -> None:
        hub = self.factory.hub
        self.out = open_output(self, self.factory.buffer_limit)
        self.uart = EmulatedUart(on_break=lambda: hub.on_break(self))
        self.pm = _PortManager(self.uart, _Conn(self.out))
        self._attach_call = self.factory.clock.callLater(ATTACH_FALLBACK, self._attach)

    def _attach(self) -> None:
        if not self.attached and not self.out.closed:
            self.attached = True
            if self._attach_call.active():
                self._attach_call.cancel()
            self.factory.hub.attach(self)

    def deliver(self, data: bytes) -> None:
        self.out.deliver(data.replace(b"\xff", b"\xff\xff"))

    def dataReceived(self, data: bytes) -> None:
        app = b"".join(self.pm.filter(data))
        if not self.attached and (app or self.uart.transmit_purged):
            self._attach()  # after the purge answers went out: nothing of ours is dropped
        if app:
            self.factory.hub.receive(app, self)

    def connectionLost(self, reason=None) -> None:
        self.out.stopProducing()
        if self._attach_call.active():
            self._attach_call.cancel()
        if self.attached:
            self.attached = False
            self.factory.hub.detach(self)


class RFC2217Factory(protocol.ServerFactory):
    protocol = RFC2217Client

    def __init__(self, hub, buffer_limit: int = DEFAULT_LIMIT, clock=None) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.hub = hub
        self.buffer_limit = buffer_limit
        self.clock = clock


def listen(reactor, hub: Hub, addr: Address) -> Listener:
    return listen_tcp(reactor, addr, RFC2217Factory(hub))


class RFC2217Link(SerialLink):
    """`rfc2217://HOST:PORT`, through pyserial's own RFC 2217 client."""

    scheme = "RFC 2217"
    can_break = True

    def _open(self, url: str) -> serial.SerialBase:
        hostport(url)
        return serial.serial_for_url(url, baudrate=115200, timeout=0.1)

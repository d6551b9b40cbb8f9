"""A fix to kafka-python 3.0.12 that srlm depends on, applied when ``srlm.bus`` is imported.

kafka-python's transport reads a socket until it would block; when the read ends with the
peer's close it aborts the connection and **drops the bytes it read just before**. A broker
that answers and then closes (the SCRAM failure response, sent after the broker's
``connection.failed.authentication.delay.ms`` together with its FIN) loses its answer, and
a wrong password reads as "socket disconnected" instead of the broker's
SaslAuthenticationFailedError. The fixed reader hands those bytes to the protocol, and lets
it act on them, before it aborts.
"""

from __future__ import annotations

import time

import kafka
from kafka import errors as Errors
from kafka.net.transport import KafkaTCPTransport

FIXED_VERSIONS = ("3.0.12",)


async def _read_from_sock(self: KafkaTCPTransport) -> None:
    while self._read and not self._closed:
        await self._net.wait_read(self._sock)
        recvd_data, err = self._sock_recv()
        if recvd_data:
            self.last_read = time.monotonic()
            if self._protocol and self._protocol._sensors:
                self._protocol._sensors.bytes_received.record(len(recvd_data))
            try:
                self._protocol.data_received(recvd_data)
            except Errors.KafkaProtocolError as protocol_error:
                return self.abort(error=protocol_error)
        if err:
            if recvd_data:
                # Let the protocol act on that answer (fail its handshake with the broker's
                # error) before the close fails everything with "socket disconnected".
                await self._net.sleep(0)
            return self.abort(error=err)


def apply() -> None:
    """Install the fixed reader; a kafka-python other than the pinned one must be re-checked."""
    if kafka.__version__ not in FIXED_VERSIONS:
        raise RuntimeError(f"srlm.bus.kafka_fixes was written against kafka-python {FIXED_VERSIONS}, "
                           f"found {kafka.__version__}: check whether the transport still drops the bytes "
                           f"read before a close, then update or remove this fix")
    KafkaTCPTransport._read_from_sock = _read_from_sock

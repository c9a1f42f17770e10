"""The client over a kept-alive connection that the server closes as a request arrives (its idle timer, a
proxy, a deploy): a read is sent once more on a new connection; a change is never sent twice. A loopback HTTP
server that closes the first connection after reading its second request, without answering it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from rlad.client import Client, ServiceUnavailable


class ClosingServer:
    """Answers every request with a job as JSON, keeping the connection alive, except the second request on
    the first connection: that one is read, then the connection is closed with no answer."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[int, str]] = []  # (connection number, request line)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            threading.Thread(target=self._connection, args=(conn, n), daemon=True).start()

    def _connection(self, conn: socket.socket, n: int) -> None:
        with conn:
            buf = b""
            served = 0
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.requests.append((n, head.split(b"\r\n", 1)[0].decode()))
                served += 1
                if n == 1 and served == 2:
                    return  # closed with the request unanswered
                body = json.dumps({"id": "job-1", "status": "running"}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[ClosingServer]:
    s = ClosingServer()
    yield s
    s.close()


def test_a_read_whose_connection_closes_unanswered_is_sent_again_on_a_new_one(server: ClosingServer) -> None:
    with Client(f"http://127.0.0.1:{server.port}", "rlad_k") as client:
        assert client.get_job("job-1")["status"] == "running"
        assert client.get_job("job-1")["status"] == "running"  # lost on connection 1, answered on connection 2
    assert server.requests == [
        (1, "GET /v1/jobs/job-1 HTTP/1.1"),
        (1, "GET /v1/jobs/job-1 HTTP/1.1"),
        (2, "GET /v1/jobs/job-1 HTTP/1.1"),
    ]


def test_a_change_whose_connection_closes_unanswered_is_not_sent_twice(server: ClosingServer) -> None:
    with Client(f"http://127.0.0.1:{server.port}", "rlad_k") as client:
        client.get_job("job-1")
        with pytest.raises(ServiceUnavailable, match="cannot reach the RLAD API"):
            client.cancel("job-1")
    assert server.requests == [(1, "GET /v1/jobs/job-1 HTTP/1.1"), (1, "POST /v1/jobs/job-1/cancel HTTP/1.1")]

"""The API's memory under an unauthenticated 300 MB POST /v1/jobs (the drill of docs/reliability.md).

Starts the API alone (embedded settings, a temporary data directory, 127.0.0.1), streams a body of `--mb`
megabytes with no key over a raw socket, and reports the answer, how much of the body the server took before
answering, and the API process's resident memory before and at its peak (VmHWM).

    python bench/unauth_body_bench.py --mb 300
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path

from rlad.service import LocalService, free_port


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def run(mb: int, authorization: str | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        svc = LocalService(Path(tmp) / "data", port=free_port(), log_to_files=False)
        svc.start(workers=False)
        try:
            pid = svc.procs["api"].pid
            rss_before = _rss_kb(pid, "VmRSS")
            total = mb * 1024 * 1024
            head = (
                f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {total}\r\n"
                + (f"Authorization: {authorization}\r\n" if authorization else "")
                + "\r\n"
            ).encode()
            chunk = b" " * (1 << 20)
            sent, t0 = 0, time.monotonic()
            with socket.create_connection(("127.0.0.1", svc.port), timeout=60) as sock:
                sock.sendall(head)
                try:
                    while sent < total:
                        sock.sendall(chunk[: min(len(chunk), total - sent)])
                        sent += min(len(chunk), total - sent)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server answered and closed: it did not want the rest
                sock.settimeout(60)
                answer = sock.recv(65536).decode(errors="replace")
            return {
                "body_mb": mb,
                "status_line": answer.splitlines()[0] if answer else "",
                "sent_mb": round(sent / 1024 / 1024, 1),
                "seconds": round(time.monotonic() - t0, 2),
                "rss_before_mb": round(rss_before / 1024, 1),
                "rss_peak_mb": round(_rss_kb(pid, "VmHWM") / 1024, 1),
            }
        finally:
            svc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=300)
    args = ap.parse_args()
    print(json.dumps(run(args.mb), indent=1))


if __name__ == "__main__":
    main()

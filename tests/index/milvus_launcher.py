"""Start a Milvus standalone server (PyPI `milvus==2.3.5`) for the tests; run by the server's
own venv: `python milvus_launcher.py BASE_DIR`. Prints the gRPC port once the server is
healthy (or "failed: ..." and exits 1), then serves until stdin closes, and stops it.

Every port is picked by the OS up front, the embedded etcd's peer port included (the launcher
leaves it at 2380 and searches the others upward from fixed defaults), so that two servers
on one machine do not collide.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request

from milvus import default_server as server

START_TIMEOUT_S = 170
# Shorter than the defaults (200, 1000, 500 ms): a strong-consistency read waits for the next
# time tick, and loading a collection for the query coordinator's next check. Segments are
# indexed from 256 rows (default 1024), so that the tests' small galleries use the real index.
FAST = {
    "proxy.timeTickInterval": 50,
    "queryCoord.checkInterval": 200,
    "queryCoord.distPullInterval": 100,
    "indexCoord.segment.minSegmentNumRowsToEnableIndex": 256,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return "OK" in resp.read().decode()
    except OSError:
        return False


def main(base: str) -> int:
    os.makedirs(base, exist_ok=True)
    ports = {key: free_port() for key in server.config.configurable_items if key.endswith("_port")}
    client, peer = ports["etcd_port"], free_port()
    etcd = os.path.join(base, "embed-etcd.yaml")
    with open(etcd, "w", encoding="utf-8") as f:
        for key in ("listen-client-urls", "advertise-client-urls"):
            f.write(f"{key}: http://127.0.0.1:{client}\n")
        for key in ("listen-peer-urls", "initial-advertise-peer-urls"):
            f.write(f"{key}: http://127.0.0.1:{peer}\n")
        f.write(f"initial-cluster: default=http://127.0.0.1:{peer}\n")
    os.environ["ETCD_CONFIG_PATH"] = etcd  # read by Milvus for its embedded etcd
    server.set_base_dir(base)
    server.config.configs.update(ports)
    for key, value in FAST.items():
        server.config.set(key, value)
    server.webservice_port = free_port()  # health and metrics; searched upward from here
    server.wait_for_started = False  # its wait ignores a server that exited: ours does not
    server.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not healthy(server.webservice_port):
        code = server.server_proc.poll()
        if code is not None or time.monotonic() > deadline:
            why = f"exited with {code}" if code is not None else "not healthy in time"
            print(f"failed: {why}; logs in {base}/logs", flush=True)
            server.stop()
            return 1
        time.sleep(0.2)
    print(server.listen_port, flush=True)
    sys.stdin.read()  # until the test session closes stdin (or ends)
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

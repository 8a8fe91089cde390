"""Run a command with one local Prefect server for all of its flow runs.

    python -m flows.local_server dvc repro

Without PREFECT_API_URL every flow run would start its own temporary server (~15 s each). This starts
one on 127.0.0.1, points the command at it, and stops it afterwards, also when the command fails.
With PREFECT_API_URL already set, the command just runs against that server.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(api_url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"Prefect server exited with code {server.returncode} during start-up")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"Prefect server at {api_url} not healthy after {timeout_s:.0f} s")


def run_with_server(command: list[str], prefect_home: Path) -> int:
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(command)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(prefect_home)}
    prefect_home.mkdir(parents=True, exist_ok=True)
    log_path = prefect_home / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port),
             "--no-services", "--no-ui"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_healthy(api_url, server, STARTUP_TIMEOUT_S)
            print(f"Prefect server {api_url} (log: {log_path})", file=sys.stderr)
            return subprocess.call(command, env=env | {"PREFECT_API_URL": api_url})
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def main() -> None:
    command = sys.argv[1:]
    if not command:
        sys.exit("usage: python -m flows.local_server COMMAND [ARGS...]")
    sys.exit(run_with_server(command, Path(os.environ.get("PREFECT_HOME", ".prefect")).resolve()))


if __name__ == "__main__":
    main()

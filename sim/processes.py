"""Start and stop the real processes of the demo and the tests: swtpm, dbus-daemon.

Each runs on a random free port or a private socket in a temp folder and is
stopped by pid (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair() -> int:
    """Return a port whose next port is free too, for swtpm's two sockets.

    swtpm binds without SO_REUSEADDR, so a port that still has connections
    in TIME_WAIT fails for it although the kernel hands it out as free. The
    check binds both ports the same way.
    """
    for _ in range(100):
        port = free_port()
        if port < 65535 and _bindable(port) and _bindable(port + 1):
            return port
    raise RuntimeError("no two adjacent free TCP ports on 127.0.0.1")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class Swtpm:
    """A running swtpm with its TCP command and control ports."""

    proc: subprocess.Popen[bytes]
    port: int
    ctrl_port: int
    state_dir: Path

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def reset(self) -> None:
        """Reset the TPM as a power cycle would (TPM_RC_INITIALIZE until Startup)."""
        subprocess.run(
            ["swtpm_ioctl", "--tcp", f"127.0.0.1:{self.ctrl_port}", "-i"],
            check=True, capture_output=True, timeout=10,
        )

    def stop(self) -> None:
        stop_process(self.proc)

    def restart(self) -> None:
        """Start swtpm again on the same ports and state, as after a crash."""
        started = start_swtpm(self.state_dir, self.port)
        self.proc = started.proc


def _spawn_swtpm(state_dir: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "swtpm", "socket", "--tpm2",
            "--tpmstate", f"dir={state_dir}",
            "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def start_swtpm(state_dir: Path, port: int | None = None) -> Swtpm:
    """Start swtpm on ``port`` (random if None) and ``port + 1``.

    The swtpm TCTI always finds the control channel at port + 1.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        chosen = port if port is not None else free_port_pair()
        proc = _spawn_swtpm(state_dir, chosen)
        try:
            _wait_for_port(chosen + 1, proc)
            _wait_for_port(chosen, proc)
            return Swtpm(proc, chosen, chosen + 1, state_dir)
        except RuntimeError:
            stop_process(proc)
            if port is not None:
                break
    raise RuntimeError("swtpm did not start; is the swtpm package installed?")


DBUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


@dataclass
class DbusDaemon:
    """A private dbus-daemon any local uid may connect to."""

    proc: subprocess.Popen[bytes]
    address: str
    directory: Path

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_dbus_daemon() -> DbusDaemon:
    # Not under pytest's tmp_path: that is private to root, and tests connect
    # from another uid too.
    directory = Path(tempfile.mkdtemp(prefix="keysvc-dbus-"))
    directory.chmod(0o755)
    socket_path = directory / "bus"
    config = directory / "bus.conf"
    config.write_text(DBUS_CONFIG.format(socket=socket_path))
    proc = subprocess.Popen(
        ["dbus-daemon", f"--config-file={config}", "--nofork", "--nopidfile",
         "--print-address=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line:
        stop_process(proc)
        raise RuntimeError("dbus-daemon did not start; is the dbus package installed?")
    deadline = time.monotonic() + READY_TIMEOUT
    while not socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.chmod(socket_path, 0o777)
    return DbusDaemon(proc, line, directory)

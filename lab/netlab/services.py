"""What runs inside a lab VM: a real OpenSSH server and a TCP listener on 3389 standing in for RDP.

The design (documented for whoever connects):
- One client key per lab (`LabKeys.client_key`, ed25519, no passphrase) is authorised on every VM;
  `known_hosts` lists each VM's own host key under its public and private addresses, so clients keep
  StrictHostKeyChecking on.
- The VM's admin user (the scenario's `admin_username`, e.g. `azureuser`) exists only inside the VM: sshd runs
  in a private mount namespace where a copy of /etc/passwd with that user is bind-mounted, and in its own UTS
  namespace whose hostname is the VM's name. So `ssh azureuser@198.51.100.10 hostname` prints `web-01`, and
  the host's /etc/passwd is never touched. The user has a uid of its own (not root) and its home in the lab's
  folder.
- sshd: own config, host key and pid file in the lab's folder, keys only, `UsePAM no`, `StrictModes no` (the
  lab's folder sits under /tmp), logs to a file in the lab's folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from lab.netlab.netns import NetlabError, in_netns, run, socket_in
from lab.netlab.topology import VmNet

SSHD = "/usr/sbin/sshd"
RDP_PORT = 3389


@dataclass(frozen=True)
class LabKeys:
    """The lab's client key pair and the known_hosts file for every VM it built."""

    client_key: Path
    known_hosts: Path


def generate_key(path: Path, comment: str) -> None:
    """An ed25519 key pair at `path` and `path.pub`."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def lab_user_id(existing_passwd: str) -> int:
    """A uid no account on the host uses, for the VMs' admin users."""
    used = {int(line.split(":")[2]) for line in existing_passwd.splitlines() if line.count(":") >= 6}
    uid = 4200
    while uid in used:
        uid += 1
    return uid


class VmServices:
    """sshd and the RDP stand-in of one lab VM; started by `start()`, ended by `stop()`."""

    def __init__(self, vm: VmNet, folder: Path, client_pub: Path, uid: int) -> None:
        self.vm = vm
        self.folder = folder
        self._client_pub = client_pub
        self._uid = uid
        self._sshd: subprocess.Popen[bytes] | None = None
        self._listeners: list[socket.socket] = []
        self._stopping = threading.Event()

    @property
    def host_public_key(self) -> str:
        """The VM's ssh host key, `type base64` (for known_hosts)."""
        parts = (self.folder / "ssh_host_ed25519_key.pub").read_text().split()
        return f"{parts[0]} {parts[1]}"

    def start(self) -> None:
        """Write sshd's files, start it inside the VM's namespace, and open the RDP stand-in."""
        self.folder.mkdir(parents=True, exist_ok=True)
        home = self.folder / "home"
        home.mkdir(exist_ok=True)
        os.chown(home, self._uid, self._uid)
        generate_key(self.folder / "ssh_host_ed25519_key", f"{self.vm.name} host key")
        authorized = self.folder / "authorized_keys"
        shutil.copyfile(self._client_pub, authorized)
        authorized.chmod(0o644)
        passwd = self.folder / "passwd"
        host_passwd = Path("/etc/passwd").read_text()
        user = self.vm.admin_username
        if not any(line.split(":")[0] == user for line in host_passwd.splitlines()):
            host_passwd += f"{user}:x:{self._uid}:{self._uid}:lab VM admin:{home}:/bin/sh\n"
        passwd.write_text(host_passwd)
        passwd.chmod(0o644)
        config = self.folder / "sshd_config"
        config.write_text(self._sshd_config())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        script = (
            f"hostname {self.vm.name} && mount --bind {passwd} /etc/passwd && exec {SSHD} -D -e -f {config}"
        )
        log = (self.folder / "sshd.log").open("ab")
        self._sshd = subprocess.Popen(  # noqa: S603 - argv, no shell
            in_netns(
                self.vm.namespace,
                ["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script],
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        self._open_rdp_standin()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until sshd greets on the VM's loopback (NetlabError with its log when it never does)."""
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.start()
        try:
            while not deadline.is_set():
                if self._sshd is not None and self._sshd.poll() is not None:
                    break
                sock = socket_in(self.vm.namespace)
                sock.settimeout(1.0)
                try:
                    sock.connect(("127.0.0.1", 22))
                    if sock.recv(64).startswith(b"SSH-"):
                        return
                except OSError:
                    pass
                finally:
                    sock.close()
                deadline.wait(0.05)
        finally:
            timer.cancel()
        log = (self.folder / "sshd.log").read_text(errors="replace")[-2000:]
        raise NetlabError(f"sshd in {self.vm.name} did not start: {log}")

    def stop(self) -> None:
        """End sshd (the process this object started) and close the RDP stand-in."""
        self._stopping.set()
        for sock in self._listeners:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            sock.close()
        if self._sshd is not None and self._sshd.poll() is None:
            self._sshd.terminate()
            try:
                self._sshd.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._sshd.kill()
                self._sshd.wait(timeout=5)

    def _sshd_config(self) -> str:
        f = self.folder
        return "\n".join(
            [
                "Port 22",
                "ListenAddress 0.0.0.0",
                "ListenAddress ::",
                f"HostKey {f / 'ssh_host_ed25519_key'}",
                f"PidFile {f / 'sshd.pid'}",
                f"AuthorizedKeysFile {f / 'authorized_keys'}",
                f"AllowUsers {self.vm.admin_username}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin no",
                "UsePAM no",
                "StrictModes no",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                "LogLevel INFO",
                "",
            ]
        )

    def _open_rdp_standin(self) -> None:
        greeting = f"RDP stand-in on {self.vm.name}\r\n".encode()
        for family, any_address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket_in(self.vm.namespace, family)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((any_address, RDP_PORT))
            sock.listen(16)
            self._listeners.append(sock)
            threading.Thread(
                target=self._serve, args=(sock, greeting), name=f"rdp-{self.vm.name}", daemon=True
            ).start()

    def _serve(self, listener: socket.socket, greeting: bytes) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(greeting)


def check_sshd() -> None:
    """NetlabError naming the package when sshd is missing."""
    if not Path(SSHD).exists():
        raise NetlabError(f"{SSHD} is missing: apt-get install openssh-server")

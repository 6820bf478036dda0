"""A real dnsmasq on a loopback port serving SRV records, for DNS discovery tests and benches.

Each instance has its own config file and port and never touches the system's dnsmasq or
resolv.conf. `serve(targets)` rewrites the records and restarts it (dnsmasq does not re-read its
main config on SIGHUP), then waits until it answers them. Records carry TTL 1 (`local-ttl`).
`make setup` installs Debian's dnsmasq-base when it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Collection, Mapping
from pathlib import Path

import dns.exception
import dns.rdatatype
import dns.resolver

from gateway_plugin.processes import free_port

__all__ = ["SRV_NAME", "Dnsmasq", "find_dnsmasq"]

SRV_NAME = "_distinfer._tcp.nodes.test"


def find_dnsmasq() -> str | None:
    found = shutil.which("dnsmasq")
    if found is None and os.path.exists("/usr/sbin/dnsmasq"):
        found = "/usr/sbin/dnsmasq"
    return found


class Dnsmasq:
    def __init__(self, folder: Path, *, binary: str | None = None, srv_name: str = SRV_NAME) -> None:
        found = binary or find_dnsmasq()
        if found is None:
            raise FileNotFoundError("dnsmasq is not installed (Debian: apt-get install dnsmasq-base)")
        self.binary = found
        self.srv_name = srv_name
        self.port = free_port()
        self.config = folder / f"dnsmasq-{self.port}.conf"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(
        self,
        targets: Mapping[str, int],
        address: str = "127.0.0.1",
        *,
        failing: Collection[str] = (),
        priorities: Mapping[str, int] | None = None,
    ) -> None:
        """Answer `srv_name` with one SRV record per `{target name: port}`, each target at `address`.

        A target name with a dot is a full host name. Those in `failing` get no address record: their
        domain is sent to a server that is not there, so looking them up fails (SERVFAIL/REFUSED).
        `priorities`: a target's SRV priority (default 0, the first choice).
        """
        zone = self.srv_name.split(".", 2)[-1]  # _service._proto.<zone>
        lines = [
            f"port={self.port}",
            "listen-address=127.0.0.1",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            f"local=/{zone}/",
            "local-ttl=1",
        ]
        for name, port in targets.items():
            host = name if "." in name else f"{name}.{zone}"
            priority = (priorities or {}).get(name, 0)
            lines.append(f"srv-host={self.srv_name},{host},{port},{priority},10")
            if name in failing:
                lines.append(f"server=/{host.split('.', 1)[1]}/127.0.0.1#{free_port()}")
            else:
                lines.append(f"host-record={host},{address}")
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.stop()
        command = [self.binary, "--keep-in-foreground", f"--conf-file={self.config}", "--pid-file=", "--log-facility=-"]
        if os.geteuid() == 0:
            command.append("--user=root")  # it reads only its own files; no need to drop to nobody
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_answering(len(targets))

    def _wait_answering(self, count: int, timeout_s: float = 10.0) -> None:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], self.port
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"dnsmasq exited with {self.process.returncode}; config {self.config}")
            try:
                if len(resolver.resolve(self.srv_name, dns.rdatatype.SRV, lifetime=0.5)) == count:
                    return
            except dns.resolver.NXDOMAIN:
                if count == 0:
                    return
            except dns.exception.DNSException:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"dnsmasq on port {self.port} did not answer within {timeout_s}s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

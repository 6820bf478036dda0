"""DNS discovery: the SRV records of one name, re-resolved when their TTL runs out.

`DISTINFER_DNS_SRV` is a name such as `_http._tcp.distinfer.default.svc.cluster.local` (a
Kubernetes headless service) or `distinfer-node.service.consul` (Consul DNS). Each record of the
lowest priority (RFC 2782: the others are backups, used when none of those has an address) names
a target and port; every A/AAAA address of the target becomes a node `http://<address>:<port>`,
weighted by the record's weight.

The name is resolved again after the smallest TTL of the answer (clamped to
[`min_interval_s`, `max_interval_s`]). NXDOMAIN or an empty answer means no nodes; a timeout or
an unreachable server keeps the last listing and retries with back-off, and a target whose own
lookup fails keeps its last addresses while the others are followed.
"""

from __future__ import annotations

import asyncio
import logging

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from discovery.node import NodeSpec
from discovery.registry import NodeRegistry
from discovery.source import Backoff

__all__ = ["DnsSrvSource", "parse_nameserver"]

log = logging.getLogger(__name__)


def parse_nameserver(text: str) -> tuple[str, int]:
    """`host[:port]` (or `[v6]:port`) as (host, port), port 53 by default."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else 53
    except ValueError as exc:
        raise ValueError(f"nameserver {text!r} has a bad port") from exc
    if not host or not 0 < port < 65536:
        raise ValueError(f"nameserver {text!r} must be host[:port]")
    return host, port


class DnsSrvSource:
    name = "dns"

    def __init__(
        self,
        srv_name: str,
        *,
        nameserver: str | None = None,
        scheme: str = "http",
        timeout_s: float = 2.0,
        min_interval_s: float = 0.5,
        max_interval_s: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._name = srv_name
        self._scheme = scheme
        self._timeout = timeout_s
        self._min = min_interval_s
        self._max = max_interval_s
        self._backoff = backoff or Backoff(base_s=0.2, cap_s=max_interval_s)
        self._resolver = dns.asyncresolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            host, port = parse_nameserver(nameserver)
            self._resolver.nameservers = [host]
            self._resolver.port = port
        self._resolver.cache = None  # the TTL schedule below is the cache
        self._known: dict[str, list[str]] = {}  # target -> its last addresses (kept through a failed lookup)
        self._failures: dict[str, int] = {}  # target -> failed lookups in a row
        self._empty = False
        self.synced = asyncio.Event()

    async def _addresses(self, target: str) -> tuple[list[str], float]:
        found: list[str] = []
        ttl = float(self._max)
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            try:
                answer = await self._resolver.resolve(target, rdtype, lifetime=self._timeout, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException:
                if rdtype == dns.rdatatype.AAAA and found:
                    continue  # some servers refuse AAAA for names they hold only A for
                raise
            if answer.rrset is not None:
                ttl = min(ttl, answer.rrset.ttl)
                found += [rdata.to_text() for rdata in answer.rrset]
        return found, ttl

    async def _target(self, target: str) -> tuple[list[str], float]:
        """A target's addresses; on a lookup failure, the last ones it had (retried soon).

        One target whose A lookup failed (SERVFAIL, a timeout) used to fail the whole round, so the
        fleet froze: no node added or removed while that one target stayed broken.
        """
        try:
            addresses, ttl = await self._addresses(target)
        except dns.exception.DNSException as exc:
            kept = self._known.get(target, [])
            failures = self._failures[target] = self._failures.get(target, 0) + 1
            if failures == 1:  # logged as it starts failing, not on every round
                log.warning("dns: addresses of %s: %s: %s; keeping %s", target, type(exc).__name__, exc, kept or "none")
            return kept, min(self._min * 2**failures, self._max)  # asked again later each time
        if self._failures.pop(target, None):
            log.warning("dns: addresses of %s answer again: %s", target, addresses)
        self._known[target] = addresses
        return addresses, ttl

    async def resolve(self) -> tuple[list[NodeSpec], float]:
        """The nodes the SRV name lists now, and how long that answer may be trusted (seconds)."""
        try:
            answer = await self._resolver.resolve(self._name, dns.rdatatype.SRV, lifetime=self._timeout, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            self._say_empty(f"{type(exc).__name__}")
            return [], self._min
        if answer.rrset is None:
            self._say_empty("no records")
            return [], self._min
        records = list(answer.rrset)
        listed = {record.target.to_text() for record in records}
        self._known = {target: kept for target, kept in self._known.items() if target in listed}
        self._failures = {target: count for target, count in self._failures.items() if target in listed}
        ttl = float(answer.rrset.ttl)
        specs: dict[str, NodeSpec] = {}
        # RFC 2782: the lowest priority first; a higher one (a backup) only when none of those has an address.
        for priority in sorted({record.priority for record in records}):
            for record in sorted(records, key=lambda r: (r.target.to_text(), r.port)):
                if record.priority != priority:
                    continue
                target = record.target.to_text()
                addresses, address_ttl = await self._target(target)
                ttl = min(ttl, address_ttl)
                if not addresses and target not in self._failures:  # a failing one is logged as it starts
                    log.warning("dns: SRV target %s of %s has no address", target, self._name)
                for address in addresses:
                    host = f"[{address}]" if ":" in address else address
                    try:
                        spec = NodeSpec(
                            url=f"{self._scheme}://{host}:{record.port}",
                            weight=float(record.weight) if record.weight > 0 else 1.0,
                            labels={"srv_target": target.rstrip("."), "srv_priority": str(record.priority)},
                        )
                    except ValueError as exc:  # port 0: "not offered here" (RFC 2782)
                        log.warning("dns: SRV record %s of %s skipped: %s", target, self._name, exc)
                        continue
                    specs.setdefault(spec.url, spec)
            if specs:
                break
        self._empty = not specs
        return list(specs.values()), ttl

    def _say_empty(self, why: str) -> None:
        """Log once when the name comes to list nothing (a short name is not searched: use a full one)."""
        if not self._empty:
            log.warning("dns: %s lists no nodes (%s); is it a fully qualified name?", self._name, why)
        self._empty = True

    async def run(self, registry: NodeRegistry) -> None:
        listed: list[NodeSpec] | None = None
        while True:
            try:
                specs, ttl = await self.resolve()
            except dns.exception.DNSException as exc:
                delay = self._backoff.next_delay()
                log.warning("dns %s: %s: %s; retrying in %.2fs", self._name, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                continue
            self._backoff.reset()
            if specs != listed:
                listed = specs
                registry.reset(self.name, specs)
            self.synced.set()
            await asyncio.sleep(min(max(ttl, self._min), self._max))

"""A small etcd v3 client over etcd's JSON gateway (HTTP POST to /v3/...; keys and values base64),
standard library only. Every failure is an nfx error: a dead or unreachable etcd is EtcdDown with the
URL that was tried, a slow one Timeout, a refused request the class etcd's gRPC status maps to."""
import base64
import contextlib
import http.client
import json
import random
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import BadInput, EtcdDown, NfxError, NotFound, Timeout

Key = str | bytes
Value = str | bytes

# gRPC status codes in the gateway's error bodies -> the nfx error a caller can act on
_GRPC = {3: BadInput, 4: Timeout, 5: NotFound, 14: EtcdDown}


def _b(x: Key | Value) -> bytes:
    if isinstance(x, bytes):
        return x
    if isinstance(x, str):
        return x.encode()
    raise BadInput(f"etcd keys and values are bytes or str, not {type(x).__name__}")


def _enc(x: Key | Value) -> str:
    return base64.b64encode(_b(x)).decode()


def _dec(s: str | None) -> bytes:
    return base64.b64decode(s) if s else b""


def prefix_end(prefix: Key) -> bytes:
    """The range_end that makes [prefix, end) every key starting with `prefix`."""
    p = bytearray(_b(prefix))
    while p:
        if p[-1] < 0xFF:
            p[-1] += 1
            return bytes(p)
        p.pop()
    return b"\0"            # etcd's "every key from here on"


@dataclass(frozen=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def of(cls, d: dict) -> "KV":
        return cls(_dec(d.get("key")), _dec(d.get("value")), int(d.get("create_revision", 0)),
                   int(d.get("mod_revision", 0)), int(d.get("version", 0)), int(d.get("lease", 0)))


class Compare:
    """Conditions of a transaction (all must hold for its success branch)."""

    @staticmethod
    def absent(key: Key) -> dict:
        """The key does not exist (its create_revision is 0): create-if-absent."""
        return {"key": _enc(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}

    @staticmethod
    def unchanged(key: Key, mod_revision: int) -> dict:
        """The key was last written at `mod_revision`: swap-if-unchanged."""
        return {"key": _enc(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(int(mod_revision))}

    @staticmethod
    def value_is(key: Key, value: Value) -> dict:
        return {"key": _enc(key), "target": "VALUE", "result": "EQUAL", "value": _enc(value)}


class Op:
    """Requests inside a transaction's branches."""

    @staticmethod
    def put(key: Key, value: Value, lease: int | None = None) -> dict:
        r = {"key": _enc(key), "value": _enc(value)}
        if lease:
            r["lease"] = str(int(lease))
        return {"request_put": r}

    @staticmethod
    def get(key: Key) -> dict:
        return {"request_range": {"key": _enc(key)}}

    @staticmethod
    def delete(key: Key) -> dict:
        return {"request_delete_range": {"key": _enc(key)}}


@dataclass
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict]

    def kvs(self, i: int = 0) -> list[KV]:
        """The key-values a request_range at position `i` of the branch that ran returned."""
        return [KV.of(d) for d in self.responses[i].get("response_range", {}).get("kvs", [])]


class Etcd:
    """One etcd endpoint (`url` like http://127.0.0.1:2379). Safe to share between threads: each
    request is its own HTTP connection (no hidden retries, so a CAS is never applied twice)."""

    def __init__(self, url: str = "http://127.0.0.1:2379", timeout: float = 5.0, enter=None):
        """`enter`: a context manager factory the connections are made in (e.g. entering the
        network namespace where etcd's address is reachable); None: the caller's."""
        u = urllib.parse.urlsplit(url)
        if u.scheme != "http" or not u.hostname:
            raise BadInput(f"etcd URL {url!r}: expected http://HOST:PORT", hint="nfx talks plain HTTP to etcd's gateway")
        self.url = url.rstrip("/")
        self.host, self.port = u.hostname, u.port or 2379
        self.timeout = timeout
        self.enter = enter

    def __repr__(self):
        return f"Etcd({self.url!r})"

    def _down(self, what: str, e: BaseException) -> EtcdDown:
        return EtcdDown(f"etcd at {self.url} does not answer ({what}: {e})",
                        hint=f"tried {self.url}: start etcd there (scripts/bootstrap.sh installs it) or give the URL of a running one")

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            with self.enter() if self.enter else contextlib.nullcontext():
                c.connect()
        except (TimeoutError, socket.timeout) as e:
            c.close()
            raise Timeout(f"etcd at {self.url}: no connection within {timeout} s", hint=f"tried {self.url}") from e
        except OSError as e:
            c.close()
            raise self._down("connect", e) from e
        return c

    def _raise_for(self, path: str, status: int, body: bytes):
        try:
            obj = json.loads(body)
            msg, code = obj.get("message") or obj.get("error"), int(obj.get("code", -1))
        except (ValueError, AttributeError):
            msg, code = body[:200].decode(errors="replace"), -1
        cls = _GRPC.get(code, NfxError)
        if cls is EtcdDown:
            raise EtcdDown(f"etcd at {self.url} is unavailable: {msg}", hint=f"tried {self.url}: is its cluster up?")
        raise cls(f"etcd {path} at {self.url}: {msg} (HTTP {status})")

    def call(self, path: str, body: dict, timeout: float | None = None) -> dict:
        """POST `body` as JSON to the gateway's `path` (like "/v3/kv/range"); the decoded reply."""
        t = self.timeout if timeout is None else timeout
        c = self._connect(t)
        try:
            c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
        except (TimeoutError, socket.timeout) as e:
            raise Timeout(f"etcd {path} at {self.url}: no answer within {t} s", hint=f"tried {self.url}") from e
        except (OSError, http.client.HTTPException) as e:
            raise self._down(path, e) from e
        finally:
            c.close()
        if r.status != 200:
            self._raise_for(path, r.status, data)
        try:
            return json.loads(data)
        except ValueError as e:
            raise NfxError(f"etcd {path} at {self.url}: the reply is not JSON: {data[:200]!r}") from e

    def health(self) -> bool:
        """etcd's /health says true (it has a leader); False if it answers otherwise; EtcdDown if not at all."""
        c = self._connect(self.timeout)
        try:
            c.request("GET", "/health")
            r = c.getresponse()
            obj = json.loads(r.read() or b"{}")
        except (TimeoutError, socket.timeout) as e:
            raise Timeout(f"etcd /health at {self.url}: no answer within {self.timeout} s") from e
        except (OSError, http.client.HTTPException) as e:
            raise self._down("/health", e) from e
        except ValueError:
            return False
        finally:
            c.close()
        return r.status == 200 and obj.get("health") in ("true", True)

    # ---- keys ----
    def get_kv(self, key: Key) -> KV | None:
        kvs = self.call("/v3/kv/range", {"key": _enc(key)}).get("kvs", [])
        return KV.of(kvs[0]) if kvs else None

    def get(self, key: Key) -> tuple[bytes, int] | None:
        """(value, mod_revision), or None if the key does not exist."""
        kv = self.get_kv(key)
        return None if kv is None else (kv.value, kv.mod_revision)

    def range_kvs(self, prefix: Key) -> list[KV]:
        r = self.call("/v3/kv/range", {"key": _enc(prefix), "range_end": _enc(prefix_end(prefix))})
        return [KV.of(d) for d in r.get("kvs", [])]

    def range(self, prefix: Key) -> dict[str, bytes]:
        """Every key starting with `prefix` (as str) -> its value."""
        return {kv.key.decode(errors="surrogateescape"): kv.value for kv in self.range_kvs(prefix)}

    def put(self, key: Key, value: Value, lease: int | None = None) -> int:
        """Write; the store's revision after it."""
        body = {"key": _enc(key), "value": _enc(value)}
        if lease:
            body["lease"] = str(int(lease))
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: Key, prefix: bool = False) -> int:
        """Remove `key` (or every key starting with it); how many were removed."""
        body = {"key": _enc(key)}
        if prefix:
            body["range_end"] = _enc(prefix_end(key))
        return int(self.call("/v3/kv/deleterange", body).get("deleted", 0))

    def put_json(self, key: Key, obj, lease: int | None = None) -> int:
        return self.put(key, json.dumps(obj, sort_keys=True), lease)

    def get_json(self, key: Key, default=None):
        got = self.get(key)
        return default if got is None else json.loads(got[0])

    # ---- transactions ----
    def txn(self, compare: Iterable[dict], success: Iterable[dict], failure: Iterable[dict] = ()) -> TxnResult:
        """If every `compare` holds, run `success`, else `failure` (Compare.*, Op.* build them)."""
        r = self.call("/v3/kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)})
        return TxnResult(bool(r.get("succeeded", False)), int(r["header"]["revision"]), r.get("responses", []))

    def create(self, key: Key, value: Value, lease: int | None = None) -> bool:
        """Put only if the key does not exist; whether it was created."""
        return self.txn([Compare.absent(key)], [Op.put(key, value, lease)]).succeeded

    def swap(self, key: Key, value: Value, mod_revision: int, lease: int | None = None) -> bool:
        """Put only if the key was last written at `mod_revision`; whether it was written."""
        return self.txn([Compare.unchanged(key, mod_revision)], [Op.put(key, value, lease)]).succeeded

    def update(self, key: Key, fn: Callable[[bytes | None], bytes | str], deadline_s: float = 10.0) -> tuple[bytes, int, int]:
        """Read-modify-write with strong consistency: `fn(current value or None)` gives the new
        value, written only if nobody wrote the key in between (compare on mod_revision, or on absence);
        on a conflict the failure branch reads the new value and `fn` runs again. `fn` may raise to
        give up. Returns (new value, revision, attempts); Timeout after `deadline_s` of conflicts.
        A Timeout or EtcdDown while a write is in flight leaves its outcome unknown (it may have been
        applied): read the key before deciding to apply a non-idempotent change again."""
        end = time.monotonic() + deadline_s
        kv, attempts = self.get_kv(key), 0
        while True:
            attempts += 1
            new = _b(fn(None if kv is None else kv.value))
            cmp = Compare.absent(key) if kv is None else Compare.unchanged(key, kv.mod_revision)
            r = self.txn([cmp], [Op.put(key, new)], [Op.get(key)])
            if r.succeeded:
                return new, r.revision, attempts
            kvs = r.kvs(0)
            kv = kvs[0] if kvs else None
            if time.monotonic() > end:
                raise Timeout(f"etcd {key!r} at {self.url}: still conflicting after {attempts} attempts in {deadline_s} s")
            time.sleep(random.uniform(0, 0.002 * min(attempts, 10)))   # spread racing writers apart

    # ---- leases ----
    def grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease: (id, TTL etcd granted; it may round a short TTL up)."""
        r = self.call("/v3/lease/grant", {"TTL": int(ttl_s)})
        return int(r["ID"]), int(r["TTL"])

    def keepalive_once(self, lease: int) -> int:
        """Refresh a lease; its TTL now, 0 if it has expired or was revoked."""
        r = self.call("/v3/lease/keepalive", {"ID": str(int(lease))})
        return int(r.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> bool:
        """Revoke a lease (its keys go with it); False if it was already gone."""
        try:
            self.call("/v3/lease/revoke", {"ID": str(int(lease))})
        except NotFound:
            return False
        return True

    def time_to_live(self, lease: int) -> int:
        """Seconds the lease has left, -1 if it does not exist."""
        return int(self.call("/v3/lease/timetolive", {"ID": str(int(lease))}).get("TTL", -1))


class KeepAlive:
    """Keeps a lease alive from a thread (a refresh every TTL/3) until stop(). If the lease is lost
    (expired while etcd was out of reach, or revoked) `lost` is set, `on_lost` is called and the
    thread ends; failures to reach etcd are kept in `error` and retried."""

    def __init__(self, etcd: Etcd, lease: int, ttl_s: int, on_lost: Callable[[int], None] | None = None):
        self.etcd, self.lease, self.ttl_s, self.on_lost = etcd, lease, ttl_s, on_lost
        self.lost = False
        self.error: NfxError | None = None
        self.refreshes = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name=f"etcd-keepalive-{lease:x}", daemon=True)
        self._t.start()

    def _run(self):
        period = max(0.1, self.ttl_s / 3)
        while not self._stop.wait(period):
            try:
                ttl = self.etcd.keepalive_once(self.lease)
            except NfxError as e:
                self.error = e
                continue
            self.error = None
            if ttl <= 0:
                self.lost = True
                if self.on_lost:
                    self.on_lost(self.lease)
                return
            self.refreshes += 1

    @property
    def alive(self) -> bool:
        return self._t.is_alive() and not self.lost

    def stop(self, revoke: bool = False) -> None:
        """Stop refreshing (the lease then expires after its TTL); with `revoke`, end it now."""
        self._stop.set()
        self._t.join(timeout=self.etcd.timeout + 1)
        if revoke and not self.lost:
            self.etcd.revoke(self.lease)

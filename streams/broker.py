"""A local Apache Kafka broker (KRaft, single node) without Docker: `driftrag kafka start|stop|status|fetch`.

On first use the broker's jars come from Maven Central through ``mvn`` into ``<cache_dir>/kafka-<version>/libs``;
later starts reuse them. Each broker keeps its config, data, log and pid file in its data directory.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from streams.settings import BrokerSettings

log = logging.getLogger(__name__)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>driftrag</groupId><artifactId>kafka-broker</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{version}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
"""

_LOG4J = """rootLogger.level=WARN
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
"""


SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


def server_properties(host: str, port: int, controller_port: int, log_dir: Path, sasl_port: int | None = None,
                      tls_keystore: Path | None = None) -> str:
    """KRaft single-node config: one process is broker and controller.

    With ``sasl_port`` a second client listener there takes SASL/SCRAM (SHA-256 or SHA-512), for clients
    configured as a secured deployment's are: over TLS (``SASL_SSL``) when ``tls_keystore`` names a PEM file with
    the broker's key and certificate, else over plaintext. The plaintext listener stays for the broker itself and
    local administration (users are added through it, see :meth:`LocalKafka.add_scram_user`).

    >>> "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in server_properties(
    ...     "127.0.0.1", 9092, 9093, Path("/d"))
    True
    >>> "SASL_PLAINTEXT://127.0.0.1:9094" in server_properties("127.0.0.1", 9092, 9093, Path("/d"), sasl_port=9094)
    True
    """
    listeners = [f"PLAINTEXT://{host}:{port}"]
    protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    sasl: list[str] = []
    if sasl_port is not None:
        name = "SASL_SSL" if tls_keystore is not None else "SASL_PLAINTEXT"
        listeners.append(f"{name}://{host}:{sasl_port}")
        protocols += f",{name}:{name}"
        sasl = [f"sasl.enabled.mechanisms={','.join(SCRAM_MECHANISMS)}"] + [
            f"listener.name.{name.lower()}.{m.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;" for m in SCRAM_MECHANISMS]
        if tls_keystore is not None:
            sasl += [f"listener.name.{name.lower()}.ssl.keystore.type=PEM",
                     f"listener.name.{name.lower()}.ssl.keystore.location={tls_keystore}"]
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{host}:{controller_port}",
        f"listeners={','.join(listeners)},CONTROLLER://{host}:{controller_port}",
        f"advertised.listeners={','.join(listeners)}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        f"listener.security.protocol.map={protocols}",
        *sasl,
        f"log.dirs={log_dir}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=5",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # Typos in topic names must fail loudly: topics come from `driftrag topics create`.
        "auto.create.topics.enable=false",
        "log.retention.check.interval.ms=60000",
        "",
    ])


def make_tls_files(directory: Path, host: str) -> tuple[Path, Path]:
    """A throwaway CA and a broker certificate for ``host`` (IP or DNS name), made with ``openssl``; for a local
    broker only. Returns ``(ca.pem, broker-keystore.pem)``; kept and reused when they exist."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, keystore = directory / "ca.pem", directory / "broker-keystore.pem"
    if ca.exists() and keystore.exists():
        return ca, keystore
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("`openssl` not found: it makes the local broker's TLS certificate (apt-get install openssl)")
    try:
        kind = "IP" if socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host) else "DNS"
    except OSError:
        kind = "DNS"
    (directory / "san.cnf").write_text(f"subjectAltName={kind}:{host},DNS:localhost\n")
    d = str(directory)
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=driftrag local CA",
         "-keyout", f"{d}/ca.key", "-out", str(ca)],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", f"{d}/broker.key",
         "-out", f"{d}/broker.csr"],
        ["x509", "-req", "-in", f"{d}/broker.csr", "-CA", str(ca), "-CAkey", f"{d}/ca.key", "-CAcreateserial",
         "-days", "3650", "-extfile", f"{d}/san.cnf", "-out", f"{d}/broker.crt"],
    ):
        r = subprocess.run([openssl, *cmd], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"openssl {cmd[0]} failed: {r.stderr[-2000:]}")
    # Kafka's PEM keystore: the PKCS#8 key, then the certificate chain, in one file.
    keystore.write_text((directory / "broker.key").read_text() + (directory / "broker.crt").read_text())
    return ca, keystore


def new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID in URL-safe base64 (22 chars).

    One in 64 of those starts with '-', which StorageTool's argument parser reads as an option: draw again.

    >>> all(len(c) == 22 and not c.startswith("-") for c in (new_cluster_id() for _ in range(500)))
    True
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (exited, not reaped) still answers kill(0): check its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


class LocalKafka:
    """One local broker: fetch jars, write config, format storage, start, wait, stop."""

    def __init__(self, broker: BrokerSettings) -> None:
        self.settings = broker
        self.data_dir = Path(broker.resolved_data_dir)
        self.libs = Path(broker.cache_dir) / f"kafka-{broker.version}" / "libs"
        self.pid_file = self.data_dir / "broker.pid"
        self.log_file = self.data_dir / "broker.log"

    @property
    def bootstrap(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    # -- jars --------------------------------------------------------------------------------------------

    def fetch(self, progress: Callable[[str], None] = print) -> Path:
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("`mvn` not found: it fetches the Kafka jars from Maven Central "
                               "(install it, e.g. `apt-get install maven`)")
        work = self.libs.parent
        work.mkdir(parents=True, exist_ok=True)
        # Several processes (test sessions, a developer's shell) share the cache: one fetch at a time.
        with (work / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if marker.exists():  # another process finished the fetch while we waited
                return self.libs
            if self.libs.exists():  # a half-done earlier fetch
                shutil.rmtree(self.libs)
            (work / "pom.xml").write_text(_POM.format(version=self.settings.version))
            progress(f"fetching Apache Kafka {self.settings.version} jars from Maven Central into {self.libs}")
            r = subprocess.run(
                [mvn, "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
                 f"-DoutputDirectory={self.libs}", "-DincludeScope=runtime"],
                capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(
                    f"mvn failed to fetch Kafka {self.settings.version}:\n{(r.stdout + r.stderr)[-3000:]}")
            if not list(self.libs.glob("kafka_2.13-*.jar")):
                raise RuntimeError(f"mvn succeeded but left no kafka_2.13 jar in {self.libs}")
            marker.write_text(self.settings.version)
        return self.libs

    # -- lifecycle ---------------------------------------------------------------------------------------

    def _pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        try:  # a stale pid file may name a recycled pid: only a Kafka JVM counts
            if b"kafka.Kafka" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None
        except OSError:
            pass
        return pid

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("`java` not found: Kafka 4 needs Java 17+ "
                               "(e.g. `apt-get install openjdk-17-jre-headless`)")
        return java

    def _answers(self, timeout: float = 2.0) -> bool:
        from confluent_kafka.admin import AdminClient

        try:
            AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False

    def start(self, progress: Callable[[str], None] = print) -> None:
        s = self.settings
        if self._pid() is not None:
            progress(f"broker already running on {self.bootstrap} (pid {self._pid()})")
            self._wait_ready(progress)
            return
        cport = s.resolved_controller_port
        if _port_open(s.host, s.port) and self._answers():
            progress(f"a Kafka broker (not started from {self.data_dir}) already answers on {self.bootstrap}")
            return
        for p in (s.port, cport, *([s.sasl_port] if s.sasl_port else [])):
            if _port_open(s.host, p):
                raise RuntimeError(f"port {s.host}:{p} is already in use by another process "
                                   "(choose another with --port / --controller-port)")
        java = self._java()
        libs = self.fetch(progress)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        keystore = make_tls_files(self.tls_dir, s.host)[1] if s.sasl_port and s.sasl_tls else None
        config.write_text(server_properties(s.host, s.port, cport, self.data_dir / "logs", s.sasl_port, keystore))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J)
        cp = f"{libs}/*"
        base = [java, "-cp", cp, f"-Dlog4j2.configurationFile={log4j}"]
        if not (self.data_dir / "logs" / "meta.properties").exists():
            r = subprocess.run([*base, "kafka.tools.StorageTool", "format", "-t", new_cluster_id(), "-c", str(config)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"formatting Kafka storage failed:\n{(r.stdout + r.stderr)[-3000:]}")
        progress(f"starting Apache Kafka {s.version} on {self.bootstrap} (data: {self.data_dir})")
        with self.log_file.open("ab") as logf:
            proc = subprocess.Popen(
                [java, f"-Xmx{s.heap}", f"-Xms{s.heap}", "-XX:+UseG1GC", *base[1:], "kafka.Kafka", str(config)],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives this command; `driftrag kafka stop` ends it
            )
        self.pid_file.write_text(str(proc.pid))
        try:
            self._wait_ready(progress, proc)
        except BaseException:  # timeout, Ctrl-C: never leave a half-started JVM behind
            self.stop(timeout_s=10)
            raise

    def _wait_ready(self, progress: Callable[[str], None], proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the broker exited with code {proc.returncode}:\n{self._log_tail()}")
            if self._answers():
                progress(f"broker ready on {self.bootstrap}")
                return
            time.sleep(0.5)
        raise RuntimeError(f"the broker did not answer within {self.settings.start_timeout_s}s:\n{self._log_tail()}")

    def _log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-n:]
        except OSError:
            return "(no broker log)"

    def stop(self, timeout_s: float = 30.0) -> bool:
        pid = self._pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):  # it may have exited by itself meanwhile
            os.killpg(pid, signal.SIGTERM)  # the broker leads its own session: the group is just the JVM
        if not self._wait_exit(pid, timeout_s):
            log.warning("broker %d ignored SIGTERM for %ss; killing it", pid, timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            self._wait_exit(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _wait_exit(pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is our child, or it stays a zombie
            if not _pid_alive(pid):
                return True
            time.sleep(0.2)
        return False

    @property
    def tls_dir(self) -> Path:
        """Where a TLS listener's throwaway CA (``ca.pem``: what clients trust) and broker certificate live."""
        return self.data_dir / "tls"

    @property
    def sasl_bootstrap(self) -> str | None:
        """host:port of the SASL/SCRAM listener, or None when the broker has none."""
        return f"{self.settings.host}:{self.settings.sasl_port}" if self.settings.sasl_port else None

    def add_scram_user(self, user: str, password: str, mechanism: str = "SCRAM-SHA-256") -> None:
        """Create (or change the password of) a SCRAM user, through the plaintext listener."""
        from confluent_kafka.admin import AdminClient, ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        if mechanism not in SCRAM_MECHANISMS:
            raise ValueError(f"SCRAM mechanism must be one of {', '.join(SCRAM_MECHANISMS)}, got {mechanism!r}")
        mech = ScramMechanism.SCRAM_SHA_256 if mechanism == "SCRAM-SHA-256" else ScramMechanism.SCRAM_SHA_512
        upsert = UserScramCredentialUpsertion(user, ScramCredentialInfo(mech, 8192), password.encode())
        admin = AdminClient({"bootstrap.servers": self.bootstrap})  # kept referenced until the result is in
        for f in admin.alter_user_scram_credentials([upsert]).values():
            f.result(timeout=30)

    def clean(self) -> None:
        """Delete the data directory (topics, offsets, log). The broker must be stopped."""
        if self._pid() is not None:
            raise RuntimeError(f"the broker from {self.data_dir} is running; stop it before deleting its data")
        if not self.data_dir.exists():
            return
        # --data-dir can point anywhere: only delete what looks like a broker data dir this module made.
        if not any((self.data_dir / n).exists() for n in ("server.properties", "broker.pid", "broker.log")):
            raise RuntimeError(f"{self.data_dir} does not look like a driftrag broker data dir; not deleting it")
        shutil.rmtree(self.data_dir)

    def status(self) -> dict:
        pid = self._pid()
        return {
            "running": pid is not None,
            "pid": pid,
            "bootstrap": self.bootstrap,
            "answers": pid is not None and self._answers(),
            "data_dir": str(self.data_dir),
            "version": self.settings.version,
        }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["start", "stop", "status", "fetch"])
    p.add_argument("--port", type=int, help="client port (default: settings.broker.port, 9092)")
    p.add_argument("--controller-port", type=int, help="KRaft controller port (default: port + 1)")
    p.add_argument("--data-dir", type=Path, help="broker data (default: <cache_dir>/broker-<port>)")
    p.add_argument("--version", dest="kafka_version", help="Apache Kafka version (default: 4.1.1)")
    p.add_argument("--heap", help="JVM heap, e.g. 512m")
    p.add_argument("--clean", action="store_true", help="with stop: delete the broker's data directory")
    p.add_argument("--sasl-port", type=int, help="with start: also a SASL/SCRAM listener on this port")
    p.add_argument("--scram-user", action="append", default=[], metavar="NAME:PASSWORD",
                   help="with start: create this SCRAM-SHA-256 user (repeatable; needs --sasl-port)")
    p.add_argument("--tls", action="store_true",
                   help="with --sasl-port: SASL over TLS (a throwaway CA in <data-dir>/tls/ca.pem for clients)")


def run(args: argparse.Namespace, settings) -> int:  # noqa: ANN001
    overrides = {k: v for k, v in {"port": args.port, "controller_port": args.controller_port,
                                   "data_dir": args.data_dir, "version": args.kafka_version,
                                   "heap": args.heap, "sasl_port": args.sasl_port,
                                   "sasl_tls": args.tls or None}.items() if v is not None}
    # model_validate (not model_copy): a bad --port is a clear validation error, not a broken broker.
    broker = LocalKafka(BrokerSettings.model_validate({**settings.broker.model_dump(), **overrides}))

    def say(msg: str) -> None:
        print(f"[driftrag kafka] {msg}", file=sys.stderr, flush=True)

    try:
        if args.action == "fetch":
            say(f"jars in {broker.fetch(say)}")
        elif args.action == "start":
            users = [u.partition(":") for u in args.scram_user]
            if users and broker.settings.sasl_port is None:
                raise ValueError("--scram-user needs a SASL listener: add --sasl-port")
            if any(not name or not sep or not pw for name, sep, pw in users):
                raise ValueError("--scram-user takes NAME:PASSWORD")
            if broker.settings.sasl_tls and broker.settings.sasl_port is None:
                raise ValueError("--tls secures the SASL listener: add --sasl-port")
            broker.start(say)
            if broker.settings.sasl_port and broker.settings.sasl_tls:
                say(f"SASL_SSL on {broker.sasl_bootstrap}; clients trust {broker.tls_dir / 'ca.pem'}")
            for name, _, pw in users:
                broker.add_scram_user(name, pw)
                say(f"SCRAM-SHA-256 user {name!r} on {broker.sasl_bootstrap}")
        elif args.action == "stop":
            say("stopped" if broker.stop() else "no broker was running")
            if args.clean and broker.data_dir.exists():
                broker.clean()
                say(f"deleted {broker.data_dir}")
        else:
            st = broker.status()
            say(f"{'running, pid ' + str(st['pid']) if st['running'] else 'not running'} on {st['bootstrap']}"
                f" ({'answers' if st['answers'] else 'does not answer'} metadata requests)")
            print(json.dumps(st), flush=True)
            return 0 if st["running"] else 3
    except RuntimeError as e:
        say(f"error: {e}")
        return 1
    return 0

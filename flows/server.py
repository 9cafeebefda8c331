"""``vouchflow server up|down|status``: a Prefect server for vouchflow, on this machine.

``up`` starts (or finds running) a Prefect server with its home under ``VOUCHFLOW_HOME``,
backed by PostgreSQL when ``VOUCHFLOW_PREFECT_DATABASE_URL`` is set (SQLite otherwise),
then makes sure the server knows everything vouchflow needs: the ``vouchflow`` process work
pool, one global concurrency limit per external system (named as ``flows.runtime.limit_name``
names them, sized to vouchflow's share), vouchflow's credential block types, the automations
in ``automations/``, and every deployment of ``prefect.yaml``. Last it starts process workers
on the pool. Every step looks before it creates, so running ``up`` twice changes nothing.

What was started (the server and worker process groups, with their command lines) is written
to ``VOUCHFLOW_HOME/server/state.json``; ``down`` stops exactly those processes and nothing
else (a pid is only signalled when its command line is still the one recorded).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

WORK_POOL = "vouchflow"
PROJECT_DIR = Path(__file__).resolve().parent.parent
AUTOMATIONS_DIR = PROJECT_DIR / "automations"
DEFAULT_PORT = 4200
ALERT_BLOCK_PLACEHOLDER = "block_document_name"

# capacities of the systems that have no setting of their own yet (requests at once)
DEFAULT_FINANCE_CONCURRENCY = 2
DEFAULT_TREASURY_CONCURRENCY = 2


class ServerError(RuntimeError):
    """``up`` could not bring the server to a working state; the message says what failed."""


# configuration ------------------------------------------------------------------------------
def vouchflow_home() -> Path:
    from state.settings import StateSettings

    return StateSettings().resolved_home()


def prefect_database_url(url: str) -> str:
    """The Prefect server speaks asyncpg: ``postgresql://``, ``postgres://`` and
    ``postgresql+psycopg://`` URLs are rewritten to ``postgresql+asyncpg://``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ServerError(f"not a database URL: {redact_url(url)}")
    base = scheme.split("+", 1)[0]
    if base in {"postgres", "postgresql"}:
        return f"postgresql+asyncpg://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise ServerError(f"unsupported Prefect database {scheme!r}: use PostgreSQL or SQLite")


def redact_url(url: str) -> str:
    """The URL without its password (for logs and status)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}{':***' if ':' in creds else ''}@{host}"


@dataclass
class ServerConfig:
    home: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    database_url: str | None = None
    """PostgreSQL for the Prefect server (``VOUCHFLOW_PREFECT_DATABASE_URL``); None: SQLite."""
    workers: int = 1
    worker_limit: int | None = None
    """Flow runs one worker runs at once (None: no limit)."""
    project_dir: Path = PROJECT_DIR
    deploy: bool = True
    ui: bool = True
    startup_timeout_s: float = 180.0

    @classmethod
    def from_env(cls, **overrides: Any) -> ServerConfig:
        values: dict[str, Any] = {
            "home": vouchflow_home(),
            "database_url": os.environ.get("VOUCHFLOW_PREFECT_DATABASE_URL") or None,
            "host": os.environ.get("VOUCHFLOW_PREFECT_HOST", "127.0.0.1"),
            "port": int(os.environ.get("VOUCHFLOW_PREFECT_PORT", DEFAULT_PORT)),
            "project_dir": Path(os.environ.get("VOUCHFLOW_PROJECT_DIR") or PROJECT_DIR),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def server_dir(self) -> Path:
        return self.home / "server"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect-server"

    @property
    def state_file(self) -> Path:
        return self.server_dir / "state.json"

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def database_kind(self) -> str:
        return "postgresql" if self.database_url else "sqlite"

    def server_env(self) -> dict[str, str]:
        """The environment of the server process."""
        env = _base_env(self)
        if self.database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = prefect_database_url(
                self.database_url)
        else:
            env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
            env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
        env["PREFECT_SERVER_API_HOST"] = self.host
        env["PREFECT_SERVER_API_PORT"] = str(self.port)
        env["PREFECT_UI_ENABLED"] = "true" if self.ui else "false"
        env["PREFECT_SERVER_UI_ENABLED"] = env["PREFECT_UI_ENABLED"]
        env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
        env.pop("PREFECT_API_URL", None)  # the server is the API; it must not call another
        return env

    def client_env(self) -> dict[str, str]:
        """The environment of workers (and so of the flow runs they start) and of
        ``prefect deploy``: the caller's VOUCHFLOW_* settings, pointed at this server."""
        env = _base_env(self)
        env["PREFECT_API_URL"] = self.api_url
        env["VOUCHFLOW_PROJECT_DIR"] = str(self.project_dir)
        env.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
        for name in ("PREFECT_SERVER_DATABASE_CONNECTION_URL",
                     "PREFECT_API_DATABASE_CONNECTION_URL"):
            env.pop(name, None)
        return env


def _base_env(cfg: ServerConfig) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PREFECT_HOME"] = str(cfg.prefect_home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["VOUCHFLOW_HOME"] = str(cfg.home)
    # the test harness's ephemeral settings must not leak into a real server or worker
    for name in ("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "PREFECT_API_KEY"):
        env.pop(name, None)
    return env


# the state file -----------------------------------------------------------------------------
@dataclass
class Process:
    role: str
    """``server`` or ``worker``."""
    pid: int
    name: str
    argv: list[str]
    log: str
    started_at: float = field(default_factory=time.time)

    def alive(self) -> bool:
        """Running and still the process that was started (not a reused pid)."""
        return _cmdline(self.pid) == self.argv


@dataclass
class ServerState:
    api_url: str = ""
    ui_url: str = ""
    database: str = ""
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ServerState:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls()
        procs = [Process(**p) for p in data.pop("processes", [])]
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__},
                   processes=procs)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    def live(self, role: str) -> list[Process]:
        return [p for p in self.processes if p.role == role and p.alive()]


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None  # a zombie
    return [part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")]


def prefect_argv(*args: str) -> list[str]:
    """Run the Prefect command line with the same interpreter as vouchflow."""
    return [sys.executable, "-m", "prefect", *args]


def _spawn(role: str, name: str, argv: list[str], env: Mapping[str, str], log: Path,
           cwd: Path) -> Process:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=dict(env), cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # its own process group
    # wait until the exec happened, so the recorded command line is the real one
    deadline = time.monotonic() + 10
    while _cmdline(proc.pid) != argv and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{name} exited at once (code {proc.returncode}); see {log}")
        time.sleep(0.05)
    return Process(role=role, pid=proc.pid, name=name, argv=argv, log=str(log))


def stop_process(proc: Process, timeout_s: float = 20.0) -> bool:
    """SIGTERM the process group that was started, SIGKILL what is left after the timeout.
    Returns False when it was no longer running (or is no longer ours)."""
    if not proc.alive():
        return False
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(proc.pid):
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(proc.pid)
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a group of zombies only is not alive
    _reap(pgid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 3 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def supervise(argv: Sequence[str], *, max_restarts: int = 10, window_s: float = 600.0) -> int:
    """Run a worker and start it again when it dies (a Prefect 3.8 worker started with
    ``--limit`` exits on an internal error when it is handed a flow run it is still finishing,
    e.g. a run retried at once after it failed). SIGTERM/SIGINT stop both for good; more than
    ``max_restarts`` deaths within ``window_s`` give up."""
    stop = False
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stop
        stop = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deaths: list[float] = []
    code = 0
    while not stop:
        child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL)
        code = child.wait()
        if stop:
            break
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < window_s] + [now]
        print(f"vouchflow: worker exited with code {code}; restart {len(deaths)}",
              file=sys.stderr, flush=True)
        if len(deaths) > max_restarts:
            print("vouchflow: too many restarts, giving up", file=sys.stderr, flush=True)
            return code or 1
        time.sleep(min(2.0 * len(deaths), 30.0))
    return 0


# health -------------------------------------------------------------------------------------
def api_healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        response = httpx.get(f"{api_url}/health", timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def wait_healthy(api_url: str, timeout_s: float, proc: Process | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if api_healthy(api_url):
            return
        if proc is not None and not proc.alive():
            raise ServerError(f"the Prefect server stopped while starting; see {proc.log}")
        time.sleep(0.5)
    raise ServerError(f"the Prefect server did not answer at {api_url} within {timeout_s:.0f} s"
                      + (f"; see {proc.log}" if proc else ""))


# PostgreSQL ---------------------------------------------------------------------------------
def ensure_postgres_database(url: str) -> bool:
    """Create the Prefect server's database when it does not exist yet (the server migrates
    it on start). Returns True when it was created."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    target = make_url(url)
    if not target.drivername.startswith("postgres") or not target.database:
        return False
    params = {"host": target.host or "127.0.0.1", "port": target.port or 5432,
              "user": target.username, "password": target.password,
              "connect_timeout": 5}
    params = {k: v for k, v in params.items() if v is not None}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (target.database,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.database)))
        return True


# what the server must know ------------------------------------------------------------------
@dataclass
class Limit:
    name: str
    limit: int
    system: str


def system_limits(env: Mapping[str, str] | None = None) -> list[Limit]:
    """One global concurrency limit per external system, named as the flows name them
    (``flows.runtime.limit_name``): the ERP account's at vouchflow's share of it
    (``VOUCHFLOW_ERP_CONCURRENCY``), each wallet site's at the site's ``concurrency``, the
    group finance service's and treasury's at their settings."""
    from connectors.erp.config import realm_for
    from connectors.wallet import load_sites
    from flows.runtime import limit_name

    env = os.environ if env is None else env
    limits: list[Limit] = []
    account = env.get("VOUCHFLOW_ERP_ACCOUNT", "")
    if account:
        share = int(env.get("VOUCHFLOW_ERP_CONCURRENCY", "5"))
        limits.append(Limit(limit_name("erp", realm_for(account)), share, "erp"))
    for code, site in load_sites().items():
        limits.append(Limit(limit_name("wallet", code), site.concurrency, "wallet"))
    limits.append(Limit(limit_name("finance"), int(env.get(
        "VOUCHFLOW_FINANCE_CONCURRENCY", DEFAULT_FINANCE_CONCURRENCY)), "finance"))
    limits.append(Limit(limit_name("treasury"), int(env.get(
        "VOUCHFLOW_TREASURY_CONCURRENCY", DEFAULT_TREASURY_CONCURRENCY)), "treasury"))
    return limits


async def _erp_account_from_block() -> str | None:
    name = os.environ.get("VOUCHFLOW_ERP_BLOCK")
    if not name:
        return None
    from flows.credentials import ErpCredentials

    try:
        block = await ErpCredentials.aload(name)
    except Exception:  # not saved yet: the environment decides
        return None
    return block.account


async def ensure_work_pool(client: Any, name: str = WORK_POOL) -> str:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        await client.create_work_pool(WorkPoolCreate(
            name=name, type="process",
            description="vouchflow's flows, run as processes from a checkout of the project",
            base_job_template=ProcessWorker.get_default_base_job_template()))
        return "created"
    if pool.type != "process":
        raise ServerError(f"work pool {name!r} exists with type {pool.type!r}, not 'process'")
    return "exists"


async def ensure_limits(client: Any, limits: Iterable[Limit]) -> dict[str, str]:
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    outcome: dict[str, str] = {}
    for want in limits:
        try:
            have = await client.read_global_concurrency_limit_by_name(want.name)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(
                name=want.name, limit=want.limit, active=True))
            outcome[want.name] = "created"
            continue
        if have.limit != want.limit or not have.active:
            await client.update_global_concurrency_limit(
                want.name, GlobalConcurrencyLimitUpdate(limit=want.limit, active=True))
            outcome[want.name] = "updated"
        else:
            outcome[want.name] = "exists"
    return outcome


def load_automations(directory: Path = AUTOMATIONS_DIR) -> list[dict[str, Any]]:
    """Every automation defined in ``automations/*.yaml`` (``automations:`` list, a list, or
    one mapping per file), as plain data."""
    import yaml

    found: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.y*ml")):
        data = yaml.safe_load(path.read_text()) or []
        if isinstance(data, dict) and "automations" in data:
            data = data["automations"]
        found.extend(data if isinstance(data, list) else [data])
    return found


async def _resolve_actions(client: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """``send-notification`` actions name their block (``block_document_name``:
    ``webhook/vouchflow-alerts``); one whose block is not saved is left out, and an
    automation left without actions only records that it fired (``do-nothing``)."""
    from prefect.exceptions import ObjectNotFound

    spec = dict(spec)
    actions = []
    for action in spec.get("actions") or []:
        action = dict(action)
        ref = action.pop(ALERT_BLOCK_PLACEHOLDER, None)
        if ref:
            slug, _, name = str(ref).partition("/")
            try:
                block = await client.read_block_document_by_name(name=name,
                                                                 block_type_slug=slug)
            except ObjectNotFound:
                continue
            action["block_document_id"] = str(block.id)
        actions.append(action)
    spec["actions"] = actions or [{"type": "do-nothing"}]
    return spec


async def ensure_automations(client: Any, specs: Sequence[dict[str, Any]]) -> dict[str, str]:
    from prefect.events.schemas.automations import AutomationCore

    outcome: dict[str, str] = {}
    for spec in specs:
        automation = AutomationCore.model_validate(await _resolve_actions(client, spec))
        existing = await client.read_automations_by_name(automation.name)
        if existing:
            await client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:  # left over from an older set-up
                await client.delete_automation(extra.id)
            outcome[automation.name] = "updated"
        else:
            await client.create_automation(automation)
            outcome[automation.name] = "created"
    return outcome


async def configure(cfg: ServerConfig) -> dict[str, Any]:
    """Work pool, global concurrency limits, block types and automations on the server at
    ``cfg.api_url`` (each created only when missing, or brought up to date)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.credentials import register_block_types

    with temporary_settings(updates={PREFECT_API_URL: cfg.api_url}):
        env = dict(os.environ)
        account = await _erp_account_from_block()
        if account:
            env["VOUCHFLOW_ERP_ACCOUNT"] = account
        async with get_client() as client:
            report: dict[str, Any] = {"work_pool": await ensure_work_pool(client)}
            report["limits"] = await ensure_limits(client, system_limits(env))
            await register_block_types()
            report["block_types"] = "registered"
            report["automations"] = await ensure_automations(client, load_automations())
    return report


def deploy(cfg: ServerConfig) -> None:
    """``prefect --no-prompt deploy --all`` from the project directory (updates deployments
    in place: a second run duplicates nothing)."""
    log = cfg.server_dir / "deploy.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        result = subprocess.run(prefect_argv("--no-prompt", "deploy", "--all"),
                                cwd=cfg.project_dir, env=cfg.client_env(), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=600, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise ServerError(f"prefect deploy failed (exit {result.returncode}); see {log}:\n"
                          f"{tail}")


# up / down ----------------------------------------------------------------------------------
@dataclass
class UpReport:
    api_url: str
    ui_url: str
    database: str
    server: str
    """``started``, ``running`` (ours, from before) or ``external`` (answering, not ours)."""
    workers_started: int
    workers_running: int
    configured: dict[str, Any]
    deployed: bool


def up(cfg: ServerConfig, log: Any = None) -> UpReport:
    say = log or (lambda _msg: None)
    cfg.server_dir.mkdir(parents=True, exist_ok=True)
    cfg.prefect_home.mkdir(parents=True, exist_ok=True)
    state = ServerState.load(cfg.state_file)
    servers = state.live("server")
    if servers and state.api_url == cfg.api_url and api_healthy(cfg.api_url):
        server_status = "running"
    elif api_healthy(cfg.api_url):
        server_status = "external"
        say(f"a Prefect server already answers at {cfg.api_url}; using it")
    else:
        for stale in servers:  # ours, but on another address or not answering
            stop_process(stale)
        if cfg.database_url:
            if ensure_postgres_database(cfg.database_url):
                say(f"created database {redact_url(cfg.database_url)}")
        argv = prefect_argv("server", "start", "--host", cfg.host, "--port", str(cfg.port))
        say(f"starting the Prefect server on {cfg.database_kind} at {cfg.ui_url}")
        proc = _spawn("server", "prefect-server", argv, cfg.server_env(),
                      cfg.server_dir / "server.log", cfg.project_dir)
        state.processes = [p for p in state.processes if p.role != "server"] + [proc]
        state.api_url, state.ui_url, state.database = cfg.api_url, cfg.ui_url, \
            cfg.database_kind
        state.save(cfg.state_file)
        wait_healthy(cfg.api_url, cfg.startup_timeout_s, proc)
        server_status = "started"
    if not state.api_url:
        state.api_url, state.ui_url, state.database = cfg.api_url, cfg.ui_url, "external"

    import asyncio

    configured = asyncio.run(configure(cfg))
    say(f"work pool {WORK_POOL}: {configured['work_pool']}; "
        f"{len(configured['limits'])} concurrency limit(s); "
        f"{len(configured['automations'])} automation(s)")
    workers = state.live("worker")
    started = 0
    taken = {w.name for w in workers}
    index = 1
    while len(workers) < cfg.workers:
        name = f"vouchflow-worker-{index}"
        index += 1
        if name in taken:
            continue
        worker = prefect_argv("worker", "start", "--pool", WORK_POOL, "--type", "process",
                              "--name", name)
        if cfg.worker_limit:
            worker += ["--limit", str(cfg.worker_limit)]
        argv = [sys.executable, "-m", "flows.server", "supervise", "--", *worker]
        proc = _spawn("worker", name, argv, cfg.client_env(),
                      cfg.server_dir / f"{name}.log", cfg.project_dir)
        workers.append(proc)
        started += 1
        say(f"started {name} (pid {proc.pid})")
    state.processes = [p for p in state.processes if p.role == "server" and p.alive()] + \
        workers
    state.save(cfg.state_file)
    if cfg.deploy:  # workers are up already: they take runs as soon as deployments exist
        say("deploying prefect.yaml")
        deploy(cfg)
    return UpReport(api_url=cfg.api_url, ui_url=cfg.ui_url, database=cfg.database_kind,
                    server=server_status, workers_started=started,
                    workers_running=len(workers), configured=configured,
                    deployed=cfg.deploy)


def down(cfg: ServerConfig, log: Any = None) -> list[str]:
    """Stop what ``up`` started: workers first (their flow runs with them), then the server.
    Returns the names of the processes stopped."""
    say = log or (lambda _msg: None)
    state = ServerState.load(cfg.state_file)
    stopped: list[str] = []
    for role in ("worker", "server"):
        for proc in [p for p in state.processes if p.role == role]:
            if stop_process(proc):
                stopped.append(proc.name)
                say(f"stopped {proc.name} (pid {proc.pid})")
    state.processes = []
    state.save(cfg.state_file)
    return stopped


def describe(cfg: ServerConfig) -> dict[str, Any]:
    state = ServerState.load(cfg.state_file)
    return {
        "api_url": state.api_url or cfg.api_url,
        "healthy": api_healthy(state.api_url or cfg.api_url),
        "database": state.database,
        "processes": [{"name": p.name, "pid": p.pid, "alive": p.alive(), "log": p.log}
                      for p in state.processes],
    }


# command line -------------------------------------------------------------------------------
server_app = typer.Typer(help="A Prefect server for vouchflow on this machine: server, work "
                         "pool, limits, deployments, workers.", no_args_is_help=True)


def _echo(message: str) -> None:
    typer.echo(message, err=True)


@server_app.command("up")
def up_cmd(
    port: Annotated[int | None, typer.Option(
        help="Port of the server and UI [VOUCHFLOW_PREFECT_PORT, 4200].")] = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on [VOUCHFLOW_PREFECT_HOST, 127.0.0.1].")] = None,
    workers: Annotated[int, typer.Option(
        help="Process workers on the vouchflow pool (more than one needs the state database "
             "on PostgreSQL).")] = 1,
    worker_limit: Annotated[int | None, typer.Option(
        help="Flow runs each worker runs at once.")] = None,
    deploy_flows: Annotated[bool, typer.Option(
        "--deploy/--no-deploy", help="Deploy prefect.yaml.")] = True,
) -> None:
    """Start (or find running) the Prefect server and make it ready for vouchflow."""
    cfg = ServerConfig.from_env(port=port, host=host, workers=workers,
                                worker_limit=worker_limit, deploy=deploy_flows)
    if workers > 1 and not os.environ.get("VOUCHFLOW_DATABASE_URL", "").startswith("postgres"):
        _echo("warning: several workers share vouchflow's state database: set "
              "VOUCHFLOW_DATABASE_URL to PostgreSQL")
    try:
        report = up(cfg, log=_echo)
    except ServerError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"Prefect server {report.server} at {report.ui_url} ({report.database}); "
               f"{report.workers_running} worker(s) on pool {WORK_POOL}")
    typer.echo(f"export PREFECT_API_URL={report.api_url}")


@server_app.command("down")
def down_cmd() -> None:
    """Stop the workers and the server that `vouchflow server up` started."""
    stopped = down(ServerConfig.from_env(), log=_echo)
    typer.echo(f"stopped {len(stopped)} process(es)" if stopped else "nothing to stop")


@server_app.command("show")
def show_cmd() -> None:
    """What `up` started and whether it is still running."""
    typer.echo(json.dumps(describe(ServerConfig.from_env()), indent=2))


# what `vouchflow status` adds -----------------------------------------------------------------
def _count(session: Any, query: Any) -> int | str:
    """A count, or ``n/a`` when its table does not exist (yet) in this database."""
    try:
        with session.begin_nested():
            return int(session.execute(query).scalar_one())
    except Exception:
        return "n/a"


def state_status_lines(session: Any) -> list[str]:
    """Held order lines, open discrepancies and remittance batches waiting for an operator's
    approval; each ``n/a`` where that part does not exist (yet) in this database."""
    from sqlalchemy import func, select

    lines: list[str] = []
    try:
        from state.models import OrderLine

        held: int | str = _count(session, select(func.count()).select_from(OrderLine)
                                 .where(OrderLine.status == "held"))
    except ImportError:
        held = "n/a"
    lines.append(f"held order lines: {held}")
    try:
        from state.remittance import BatchStatus, ReconDiscrepancy, RemittanceBatch

        open_discrepancies: int | str = _count(
            session, select(func.count()).select_from(ReconDiscrepancy)
            .where(ReconDiscrepancy.status == "open"))
        waiting: int | str = _count(
            session, select(func.count()).select_from(RemittanceBatch).where(
                RemittanceBatch.status == BatchStatus.VALIDATED,
                RemittanceBatch.blocking.is_not(None)))
    except ImportError:
        open_discrepancies = waiting = "n/a"
    lines.append(f"open discrepancies: {open_discrepancies}")
    lines.append(f"remittance batches waiting for approval: {waiting}")
    return lines


async def deployment_status_lines(api_url: str | None = None, timeout_s: float = 5.0
                                  ) -> list[str]:
    """The last run of each deployment and the runs paused for an approval, from the Prefect
    API in ``PREFECT_API_URL``; ``n/a`` without one or when it does not answer."""
    api_url = api_url or os.environ.get("PREFECT_API_URL")
    if not api_url:
        return ["deployments: n/a (PREFECT_API_URL is not set)"]
    if not api_healthy(api_url, timeout_s):
        return [f"deployments: n/a (no answer from {api_url})"]
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    lines = ["deployments (last run):"]
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            deployments = await client.read_deployments()
            flows = {f.id: f.name for f in await client.read_flows()}
            for dep in sorted(deployments, key=lambda d: (flows.get(d.flow_id, ""), d.name)):
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                        type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED]))),
                    sort=FlowRunSort.START_TIME_DESC, limit=1)
                name = f"{flows.get(dep.flow_id, '?')}/{dep.name}"
                paused = " (schedule paused)" if dep.paused else ""
                if not runs:
                    lines.append(f"  {name:<40} no run yet{paused}")
                    continue
                run = runs[0]
                when = run.start_time or run.expected_start_time
                stamp = f"{when:%Y-%m-%d %H:%M:%S}" if when else "-"
                took = f" {run.total_run_time.total_seconds():.0f}s" if run.total_run_time \
                    else ""
                state = run.state.name if run.state else "?"
                lines.append(f"  {name:<40} {state:<10} {stamp}{took}{paused}")
            if not deployments:
                lines.append("  (none deployed)")
            waiting = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(
                    any_=[StateType.PAUSED]))))
    lines.append(f"runs waiting for an approval (paused): {len(waiting)}")
    lines += [f"  {r.name} ({r.id})" for r in waiting[:20]]
    return lines


if __name__ == "__main__":  # `python -m flows.server supervise -- ARGV...` (used by `up`)
    if len(sys.argv) > 2 and sys.argv[1] == "supervise" and sys.argv[2] == "--":
        sys.exit(supervise(sys.argv[3:]))
    sys.exit("usage: python -m flows.server supervise -- COMMAND...")

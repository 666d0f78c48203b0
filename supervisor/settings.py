"""All configuration in one pydantic class, read from ``MODELSERVE_*`` environment variables.

Every process of the system (launcher, API workers, reconciler) builds its own ``Settings()``
from the same environment, so the launcher only has to export variables to its children.
Derived paths are properties, never separate settings, so they cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELSERVE_", extra="ignore")

    data_dir: Path = Field(default=Path.home() / ".modelserve")
    # The single gateway every user talks to.
    host: str = "127.0.0.1"
    port: int = 8080
    # Internal ports, bound on 127.0.0.1 only; Nginx fronts them.
    api_port: int = 8081
    mlflow_port: int = 8082
    # Scoring servers get ports from this range, one per version, kept stable in the store.
    port_range_start: int = 20000
    port_range_end: int = 29999
    # MLflow tracking server; empty means "start the embedded one" (see launcher).
    tracking_uri: str = ""
    store_url: str = ""  # SQLAlchemy URL; empty means SQLite under data_dir
    runtime: str = "process"
    reconcile_interval: float = 3.0
    # Seconds `up` waits for each process it starts (MLflow's first start on a busy machine is slow).
    start_timeout: float = 300.0
    # The API is one process of threads by default: its handlers wait on MLflow and the store,
    # and one process means one cache of access decisions, kept warm for every refresh Nginx
    # sends (with several, each new credential pays MLflow's slow password check once per process).
    api_workers: int = 1
    api_threads: int = 8
    # Processes per version's scoring server (forked after the model is loaded; one core each);
    # "auto" is one per core, at most two.
    scoring_workers: str = "auto"
    # Micro-batching of concurrent requests: auto (on for row-independent flavors), on, off.
    # A registered model's (or version's) tag ``modelserve.batching`` overrides it.
    batching: str = "auto"
    # A version's server that answered /ping once and then answers nothing for this long (hung,
    # deadlocked, stopped) is killed and restarted by its model host. 0: only exits restart it.
    liveness_seconds: float = 30.0
    health_timeout: float = 180.0
    # A served entity with scale_to_zero_enabled that had no request for this long has its scoring
    # server stopped (environment and files kept); its first request starts it again.
    scale_to_zero_idle_seconds: float = 1800.0
    # Inference tables (auto_capture_config): rows of requests older than this many days are
    # deleted by the ingester; 0 keeps every row.
    inference_table_retention_days: float = 30.0
    build_timeout: float = 900.0
    max_body_mb: int = 16
    nginx_bin: str = "nginx"
    nginx_templates: Path = REPO_ROOT / "nginx"
    webhook_secret: str = ""  # HMAC secret of the MLflow webhook that wakes the reconciler
    uv_bin: str = ""  # empty: the uv installed beside this Python, else from PATH
    # Docker runtime (MODELSERVE_RUNTIME=docker). The base image must have python3; hosts without
    # a registry build one with images/build-base-image.sh.
    docker_base_image: str = "python:3.11-slim"
    # No longer read: a model's container has no network (network_mode "none"; the gateway reaches
    # its scoring servers through the bind-mounted socket directory), or the engine's default
    # bridge when its box has network on, never the host's nor the stack's network. Kept so that
    # an environment that still sets MODELSERVE_DOCKER_NETWORK (older compose files) parses.
    docker_network: str = "host"
    # Seconds an old container keeps running after the gateway stopped routing to it.
    docker_drain_seconds: float = 2.0
    # Swarm runtime (MODELSERVE_RUNTIME=swarm; supervisor/runtime/swarm.py). Images are built on
    # the local engine (DOCKER_HOST), pushed to ``registry_push`` (default: ``registry``) and pulled
    # by the nodes from ``registry``; services are made through ``swarm_manager`` (a Docker host
    # URL; default: the local engine, when the supervisor runs on a manager node).
    registry: str = ""
    registry_push: str = ""
    swarm_manager: str = ""
    # At most this many replicas of a version per node (0: no limit), and node constraints
    # ("node.labels.modelserve==true", comma-separated) and a spread preference (a node label).
    swarm_max_replicas_per_node: int = 1
    swarm_constraints: str = ""
    swarm_spread: str = ""
    # The address(es) the gateway's connections reach the nodes from (comma-separated): a scoring
    # server takes connections from these and loopback only. Empty: this machine's own source
    # address towards the manager node; "any": from anywhere (models not kept apart).
    swarm_gateway_address: str = ""
    # Where the scoring servers' Unix sockets live (one directory per model); empty: <data_dir>/sock.
    # Socket paths must fit in 108 bytes, so a long data dir needs a shorter one here.
    socket_dir: Path | None = None
    # Every served model runs in a box of its own (supervisor/isolation): these are the limits of
    # a model's host and all its scoring servers together, unless a MANAGE user set the model's own.
    model_memory_mb: int = 2048
    model_cpus: float = 2.0
    model_pids: int = 512  # processes and threads
    model_tmp_mb: int = 256  # its private writable /tmp
    # When the supervisor runs as root, each served model gets a system uid/gid of its own from
    # this range (kept in the store, the same after restarts).
    model_uid_start: int = 70000
    model_uid_end: int = 79999
    # How a model is confined on the process runtime: "bwrap" (bubblewrap: its own mount, PID,
    # network and IPC namespaces). "off" runs model code unconfined, for local play only; `up`
    # and the health endpoint say so.
    sandbox: str = "bwrap"
    # Access control (supervisor/auth/). On by default: ``MODELSERVE_AUTH=off`` is for local play only.
    auth: bool = True
    admin_username: str = "admin"
    admin_password: str = ""  # empty: the one kept in <auth_dir>/admin_password
    # Where the admin password, MLflow's Flask secret and its auth config are kept; empty:
    # <data_dir>/auth. compose.yaml points it at the "secrets" volume.
    secrets_dir: Path | None = None
    # Run as compose.yaml's supervisor service: Nginx runs in the gateway container, which shares
    # only the data dir with this one, so `up` renders its config and has it reloaded through the
    # gateway's control socket (gatewaycontrol.py) but neither starts nor stops it; the API also
    # listens on a Unix socket there for it. A stop (a restart of this container) leaves the
    # gateway and the model containers serving. `docker compose down` stops those
    # (supervisor/runtime/docker.py).
    compose: bool = False
    # How long Nginx and each API worker may reuse an access decision (a revoked token or a
    # removed permission stops working within this time). 0 asks MLflow every time.
    auth_cache_seconds: float = 10.0
    # How long the gateway keeps using its last access decisions while the access check itself
    # cannot answer (the supervisor API restarting, MLflow unreachable). 0: refuse (503) at once.
    auth_stale_seconds: float = 300.0
    # MLflow's default_permission for the embedded tracking server (a user's permission on a
    # model nobody granted them anything on): READ (MLflow's default) or NO_PERMISSIONS.
    auth_default_permission: str = "READ"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'modelserve.db'}"

    @property
    def envs_dir(self) -> Path:
        return self.data_dir / "envs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def hosts_dir(self) -> Path:
        return self.data_dir / "hosts"

    @property
    def sockets_dir(self) -> Path:
        return self.socket_dir or self.data_dir / "sock"

    @property
    def nginx_dir(self) -> Path:
        return self.data_dir / "nginx"

    @property
    def metrics_log(self) -> Path:
        """Nginx's one-line-per-scoring-request log, read by the reconciler (supervisor/metrics)."""
        return self.nginx_dir / "metrics.log"

    @property
    def capture_log(self) -> Path:
        """Nginx's line per sampled request of an endpoint with capture on (supervisor/capture)."""
        return self.nginx_dir / "capture.log"

    @property
    def spool_dir(self) -> Path:
        """The versions' capture spools (the response bodies; supervisor/scoring/spool.py)."""
        return self.data_dir / "capture"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def auth_dir(self) -> Path:
        return self.secrets_dir or self.data_dir / "auth"

    @property
    def admin_password_file(self) -> Path:
        return self.auth_dir / "admin_password"

    def resolved_admin_password(self) -> str:
        """The admin password: from the environment, else the file ``up`` created ('' if none)."""
        if self.admin_password:
            return self.admin_password
        try:
            return self.admin_password_file.read_text().strip()
        except OSError:
            return ""

    @property
    def api_socket(self) -> Path:
        """Where the gateway container reaches the API in compose (and a swarm stack): a Unix
        socket in the data dir, the one thing the two containers share."""
        return self.run_dir / "api.sock"

    @property
    def api_upstream(self) -> str:
        """The API as Nginx's upstream names it."""
        return f"unix:{self.api_socket}" if self.compose else f"127.0.0.1:{self.api_port}"

    @property
    def wake_socket(self) -> Path:
        return self.run_dir / "reconciler.sock"

"""Read-only view of the MLflow Model Registry, reduced to what serving needs.

The reconciler asks one question per enabled model: which versions exist, in which stage, with
which aliases. Answers are plain frozen dataclasses so the planner stays pure and testable with
hand-made registries. ``RegistryUnavailable`` separates "the registry said no such model" (stop
serving it) from "the registry did not answer" (keep serving everything as it is).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException, RestException
from mlflow.tracking import MlflowClient


class RegistryUnavailable(Exception):
    """The registry could not be reached or answered with a server error."""


@dataclass(frozen=True)
class RegistryVersion:
    version: str
    stage: str = "None"
    aliases: tuple[str, ...] = ()
    status: str = "READY"  # MLflow's registration status: PENDING_REGISTRATION | READY | FAILED_REGISTRATION
    source: str = ""
    created: int = 0
    batching: str = ""  # the version's (else the model's) ``modelserve.batching`` tag: auto | on | off


@dataclass(frozen=True)
class RegistryModel:
    name: str
    versions: tuple[RegistryVersion, ...] = field(default_factory=tuple)

    def servable(self) -> tuple[RegistryVersion, ...]:
        """Every version that should be served: registered and not archived."""
        return tuple(v for v in self.versions if v.stage != "Archived" and v.status == "READY")


BATCHING_TAG = "modelserve.batching"


def batching_tag(*tag_sets: dict[str, str] | None) -> str:
    """The first valid ``modelserve.batching`` tag (version tags before model tags), else ""."""
    for tags in tag_sets:
        value = str((tags or {}).get(BATCHING_TAG, "")).strip().lower()
        if value in ("auto", "on", "off"):
            return value
    return ""


def _not_found(exc: MlflowException) -> bool:
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND")


def fail_fast_http() -> None:
    # MLflow's client retries a refused connection for minutes by default; the reconciler must
    # notice an unreachable registry within seconds and keep serving, retrying at its next tick.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    # A hung registry (accepting, never answering) is noticed within two timeouts: ~21 s.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class Registry:
    def __init__(self, tracking_uri: str) -> None:
        fail_fast_http()
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def get_model(self, name: str) -> RegistryModel | None:
        """The model and all its versions, or None when the registry says it does not exist."""
        try:
            rm = self.client.get_registered_model(name)
            versions = self._versions(name)
        except RestException as exc:
            if _not_found(exc):
                return None
            if exc.get_http_status_code() < 500:
                raise
            raise RegistryUnavailable(str(exc)) from exc
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise RegistryUnavailable(str(exc)) from exc
        except Exception as exc:  # connection errors surface as requests/urllib3 exceptions
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        aliases_by_version: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases_by_version.setdefault(str(version), []).append(alias)
        out = [
            RegistryVersion(
                version=str(mv.version),
                stage=mv.current_stage or "None",
                aliases=tuple(sorted(aliases_by_version.get(str(mv.version), []))),
                status=mv.status or "READY",
                source=mv.source or "",
                created=int(mv.creation_timestamp or 0),
                batching=batching_tag(mv.tags, rm.tags),
            )
            for mv in versions
        ]
        out.sort(key=lambda v: int(v.version) if v.version.isdigit() else 0)
        return RegistryModel(name=name, versions=tuple(out))

    def _versions(self, name: str) -> list[mlflow.entities.model_registry.ModelVersion]:
        # The filter grammar has no escape for a name holding both quote kinds: such a name is
        # looked up by listing every version and filtering here, slower but exact.
        if "'" not in name:
            flt = f"name='{name}'"
        elif '"' not in name:
            flt = f'name="{name}"'
        else:
            flt = ""
        found = self.client.search_model_versions(flt) if flt else self.client.search_model_versions()
        return [mv for mv in found if mv.name == name]

    def exists(self, name: str) -> bool:
        return self.get_model(name) is not None

    def list_models(self) -> list[str]:
        try:
            return sorted(rm.name for rm in self.client.search_registered_models())
        except Exception as exc:
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def download(self, name: str, version: str, dest: Path) -> Path:
        """Download the version's model directory to ``dest`` atomically (temp dir + rename)."""
        if (dest / "MLmodel").exists():
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".dl-{dest.name}-", dir=dest.parent))
        try:
            try:
                uri = self.client.get_model_version_download_uri(name, version)
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp),
                                                                tracking_uri=self.tracking_uri))
            except RestException as exc:
                if exc.get_http_status_code() < 500:
                    raise
                raise RegistryUnavailable(str(exc)) from exc
            except MlflowException as exc:
                # MLflow reports a refused or timed-out connection as INTERNAL_ERROR.
                if exc.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE"):
                    raise RegistryUnavailable(str(exc)) from exc
                raise
            except OSError as exc:  # connection errors: the registry is away, not the model broken
                raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
            if not (local / "MLmodel").exists():
                candidates = list(local.rglob("MLmodel"))
                if not candidates:
                    raise ValueError(f"no MLmodel file in the artifacts of {name} version {version} ({uri})")
                local = candidates[0].parent
            if dest.exists():
                shutil.rmtree(dest)
            local.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def fetch_files(self, name: str, version: str, paths: list[str], dest: Path) -> Path:
        """Download only some files of a version's model (e.g. its MLmodel and input example)
        into ``dest``; a file the model does not have is skipped."""
        try:
            uri = self.client.get_model_version_download_uri(name, version).rstrip("/")
        except Exception as exc:
            raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        dest.mkdir(parents=True, exist_ok=True)
        for rel in paths:
            try:
                mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{rel}", dst_path=str(dest),
                                                    tracking_uri=self.tracking_uri)
            except MlflowException:
                continue  # not logged with this model
            except OSError as exc:
                raise RegistryUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return dest

"""Who is calling, and may they do this to that model: the one place decisions are made.

The API's handlers, the Nginx ``auth_request`` check and the pages all call ``Access``; none of
them looks at a header or a permission name itself. Rights are MLflow's, per registered model:
READ (or more) to score and to see a model's serving status, MANAGE to enable or disable it;
MLflow admins may do everything. With authentication turned off every caller is an anonymous
admin, so the callers need no second code path.

Serving endpoints have rights of their own, kept in the store as Databricks keeps them: CAN_VIEW,
CAN_QUERY, CAN_MANAGE, the creator holding CAN_MANAGE. They do not follow the models' rights: an
endpoint is what its manager chose to offer (putting a model into one needs READ on the model),
so querying it needs CAN_QUERY on it and nothing on the model (docs/DESIGN.md says why).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from supervisor.auth import tokens
from supervisor.auth.credentials import BadCredential, Credential, parse_headers
from supervisor.auth.mlflow_users import READ_OR_MORE, AuthBackendError, MlflowUsers
from supervisor.settings import Settings
from supervisor.store import Store

Need = Literal["read", "manage"]
EndpointLevel = Literal["CAN_VIEW", "CAN_QUERY", "CAN_MANAGE"]
ENDPOINT_LEVELS: tuple[EndpointLevel, ...] = ("CAN_VIEW", "CAN_QUERY", "CAN_MANAGE")  # each includes those before


class Unauthenticated(Exception):
    """No credential, or one that is not (or no longer) valid: 401."""


class Forbidden(Exception):
    """A known caller without the permission this needs: 403."""


@dataclass(frozen=True)
class Principal:
    username: str
    is_admin: bool
    via: Literal["token", "password", "none"]


ANONYMOUS = Principal("anonymous", True, "none")


class Access:
    def __init__(self, settings: Settings, store: Store, users: MlflowUsers | None = None) -> None:
        self.enabled = settings.auth
        self.store = store
        self.users = users
        if self.enabled and users is None:
            # Half the cache time: Nginx's decision cache holds the other half (gateway.py).
            self.users = MlflowUsers(settings.resolved_tracking_uri, settings.admin_username,
                                     settings.resolved_admin_password(), settings.auth_cache_seconds / 2,
                                     grace=settings.auth_stale_seconds)

    def _users(self) -> MlflowUsers:
        assert self.users is not None
        return self.users

    def authenticate(self, authorization: list[str]) -> Principal:
        """The caller named by the request's ``Authorization`` headers (all of them)."""
        if not self.enabled:
            return ANONYMOUS
        try:
            cred = parse_headers(authorization)
        except BadCredential as exc:
            raise Unauthenticated(str(exc)) from exc
        if cred is None:
            raise Unauthenticated("Credentials are required: a token (Authorization: Bearer <token>, or "
                                  "Basic token:<token>) or your MLflow username and password")
        return self.principal(cred)

    def principal(self, cred: Credential) -> Principal:
        users = self._users()
        if cred.kind == "token":
            owner = tokens.verify_token(self.store, cred.secret)
            user = users.user(owner) if owner is not None else None
            if user is None:
                raise Unauthenticated("Invalid, expired or revoked token")
            return Principal(user.username, user.is_admin, "token")
        user = users.check_password(cred.username, cred.secret)
        if user is None:
            raise Unauthenticated("Wrong MLflow username or password")
        return Principal(user.username, user.is_admin, "password")

    def allowed(self, who: Principal, model: str, need: Need) -> bool:
        if who.is_admin:
            return True
        permission = self._users().permission(who.username, model)
        return permission == "MANAGE" if need == "manage" else permission in READ_OR_MORE

    def endpoint_level(self, who: Principal, endpoint_id: str) -> EndpointLevel | None:
        """The caller's level on an endpoint: admins manage every one, others have their grant."""
        if who.is_admin:
            return "CAN_MANAGE"
        level = self.store.endpoint_grants(endpoint_id).get(who.username)
        return level if level in ENDPOINT_LEVELS else None  # type: ignore[return-value]

    def endpoint_allowed(self, who: Principal, endpoint_id: str, need: EndpointLevel) -> bool:
        level = self.endpoint_level(who, endpoint_id)
        return level is not None and ENDPOINT_LEVELS.index(level) >= ENDPOINT_LEVELS.index(need)

    def require_endpoint(self, who: Principal, endpoint_id: str, name: str, need: EndpointLevel) -> None:
        if not self.endpoint_allowed(who, endpoint_id, need):
            raise Forbidden(f"User '{who.username}' does not have permission {need} on serving endpoint '{name}'")

    def require(self, who: Principal, model: str, need: Need) -> None:
        if not self.allowed(who, model, need):
            what = "MANAGE" if need == "manage" else "READ"
            raise Forbidden(f"User '{who.username}' needs {what} permission on registered model '{model}'")


__all__ = ["Access", "AuthBackendError", "Forbidden", "Principal", "Unauthenticated", "ANONYMOUS", "ENDPOINT_LEVELS"]

"""The ``authorization_function`` our embedded MLflow server runs: MLflow accepts our tokens too.

MLflow's basic-auth app knows only usernames and passwords, and it checks each request against
the permissions of the user it names, so the gateway cannot simply swap a token for other
credentials (that would need the user's password, or impersonating them as the admin). Instead,
the embedded tracking server is configured (``authorization_function`` in its auth config) to
call this function: a modelserve token (``Bearer``, or Basic ``token:<token>``) is looked up in
the modelserve store and becomes its owner; anything else goes to MLflow's own Basic check
unchanged. MLflow then applies that user's permissions exactly as for a password login.

It runs inside the MLflow server process and needs the modelserve store (the launcher passes
``MODELSERVE_*`` to it). An external tracking server can use it the same way if it can reach
the store; otherwise the MLflow API behind the gateway takes usernames and passwords only.
"""

from __future__ import annotations

import functools

from flask import Response, request
from werkzeug.datastructures import Authorization

from supervisor.auth import tokens
from supervisor.auth.credentials import BadCredential, parse
from supervisor.settings import Settings
from supervisor.store import Store


@functools.lru_cache(maxsize=1)
def _store() -> Store:
    return Store(Settings().resolved_store_url)


def authenticate_request() -> Authorization | Response:
    from mlflow.server.auth import authenticate_request_basic_auth, make_basic_auth_response

    try:
        cred = parse(request.headers.get("Authorization"))
    except BadCredential:
        return make_basic_auth_response()
    if cred is None or cred.kind != "token":
        return authenticate_request_basic_auth()
    owner = tokens.verify_token(_store(), cred.secret)
    if owner is None:
        return make_basic_auth_response()
    return Authorization("basic", {"username": owner, "password": ""})

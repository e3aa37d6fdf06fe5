"""The Artworks page and the catalogue API for Airflow's API server, behind Airflow's auth.

``plugins/artclf_plugin.py`` registers it (lazily: this module loads on the first request).

Airflow mounts a plugin's FastAPI app with ``app.mount()`` and authenticates none of its
routes: the core API's router-level dependency does not reach a mounted app. So every route
of :func:`artclf_core.web.app.create_app` depends on one of the two guards below, which ask
Airflow's own auth manager, exactly as the core API does:

* the caller is the user of the JWT in ``Authorization: Bearer`` (API clients, from
  ``POST /auth/token``) or in the UI's session cookie (the page, opened from the nav);
* **reading** (the page, the catalogue, classify, review queue, lake, models) needs the
  right to read assets (``is_authorized_asset(method="GET")``): every Airflow role;
* **changing a label** needs the right to change assets (``method="PUT"``): with the simple
  auth manager, roles ``op`` and ``admin``; with the FAB auth manager, the roles that may
  edit assets (Op and Admin by default). The change is recorded under the user's name.

The catalogue is an asset of the lake in Airflow's model (the ``artclf_ingest`` DAG feeds
it), which is why its read/edit rights are the asset rights rather than a custom role.

Settings come from the two Airflow connections (``artclf_db``, ``artclf_s3``), read on the
first request, as the DAGs read them. TensorFlow loads only on the first ``classify``.
"""

from __future__ import annotations

from typing import Annotated

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.core_api.security import (
    COOKIE_NAME_JWT_TOKEN,
    bearer_scheme,
    get_user,
    oauth2_scheme,
)
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials

from artclf_core.web.app import Access, Caller, create_app


def _may(user, method: str) -> bool:
    return bool(get_auth_manager().is_authorized_asset(method=method, user=user))


async def _user(
    request: Request,
    oauth_token: Annotated[str | None, Depends(oauth2_scheme)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
):
    """Airflow's own ``get_user``, with every authentication failure answered as RFC 6750
    says: 401 and ``WWW-Authenticate: Bearer`` (``error="invalid_token"`` when a token was
    presented). Airflow answers a malformed token with 403, which tells a client "you may
    not" where the truth is "we do not know who you are"; 403 is kept for a known user
    without the right (:func:`reader`, :func:`editor`)."""
    try:
        return await get_user(request, oauth_token, bearer)
    except HTTPException as exc:
        if exc.status_code not in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN):
            raise
        presented = bool(bearer and bearer.credentials) or bool(
            request.cookies.get(COOKIE_NAME_JWT_TOKEN)
        )
        challenge = 'Bearer error="invalid_token"' if presented else "Bearer"
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, exc.detail, headers={"WWW-Authenticate": challenge}
        ) from exc


UserDep = Annotated[object, Depends(_user)]


def reader(user: UserDep) -> Caller:
    if not _may(user, "GET"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "your role may not read the catalogue")
    return Caller(name=user.get_name(), can_edit=_may(user, "PUT"))


def editor(user: UserDep) -> Caller:
    if not _may(user, "PUT"):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "changing a label needs a role that may edit assets (op or admin)",
        )
    return Caller(name=user.get_name(), can_edit=True)


def _settings():
    from artclf_airflow.connections import settings_from_connections

    return settings_from_connections()


def _login_url() -> str:
    """Looked up per request: the auth manager is set up after plugins are imported."""
    return get_auth_manager().get_url_login()


#: The app artclf_plugin.LazyApp serves under /artclf.
app = create_app(Access(reader=reader, editor=editor, login_url=_login_url), _settings)

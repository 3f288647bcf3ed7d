"""Bearer-token authentication of the tenant routes: the company comes from the token only."""

import functools
from collections.abc import Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from etl_assets.api.errors import error
from etl_assets.services.access.tokens import authenticate

TenantEndpoint = Callable[[Request, str], Awaitable[Response]]
# One answer for a missing, malformed, unknown or revoked token: nothing tells them apart.
UNAUTHORIZED = "missing or invalid bearer token"


def tenant(endpoint: TenantEndpoint) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint, called with the company of the request's bearer token, or 401."""

    @functools.wraps(endpoint)
    async def authenticated(request: Request) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        company = None
        if scheme.lower() == "bearer" and token.strip():
            company = await run_in_threadpool(authenticate, request.app.state.engine, token.strip())
        if company is None:
            return error(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
        return await endpoint(request, company)

    return authenticated

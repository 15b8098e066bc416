"""OAUTHBEARER tokens for aiokafka (faust's clients in the worker) from an OIDC provider.

librdkafka does the OIDC client-credentials grant itself (``sasl.oauthbearer.method=oidc``);
aiokafka only asks a token provider for a token at each SASL authentication, so this one does the
same grant and keeps the token until shortly before it expires.
"""

from __future__ import annotations

import time

import aiohttp
from aiokafka.abc import AbstractTokenProvider
from pydantic import SecretStr

# a token within this long of its expiry is replaced, so no connection authenticates with one
# that expires on the way
REFRESH_MARGIN_S = 30.0
DEFAULT_LIFETIME_S = 300.0  # a token response without expires_in
HTTP_TIMEOUT_S = 10.0


class OidcTokenProvider(AbstractTokenProvider):
    def __init__(
        self,
        token_endpoint_url: str,
        client_id: str,
        client_secret: SecretStr | None,
        scope: str | None = None,
    ) -> None:
        self.url = token_endpoint_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self._token: str | None = None
        self._valid_until = 0.0

    async def token(self) -> str:
        if self._token is None or time.monotonic() >= self._valid_until:
            self._token, lifetime = await self._fetch()
            self._valid_until = time.monotonic() + max(0.0, lifetime - REFRESH_MARGIN_S)
        return self._token

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        secret = "" if self._secret is None else self._secret.get_secret_value()
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        auth = {"Authorization": aiohttp.encode_basic_auth(self.client_id, secret)}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(self.url, data=form, headers=auth) as response,
        ):
            if response.status != 200:
                raise RuntimeError(
                    f"the token endpoint {self.url} answered {response.status}: "
                    f"{(await response.text())[:200]}"
                )
            body = await response.json(content_type=None)
        return str(body["access_token"]), float(body.get("expires_in", DEFAULT_LIFETIME_S))

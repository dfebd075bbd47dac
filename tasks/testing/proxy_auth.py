"""The key check of the stand-in gateway's LiteLLM proxy (LiteLLM's `custom_auth` hook).

A LiteLLM proxy without a database knows one key, its master key, and answers any other
with HTTP 400 "No connected db."; virtual keys with their own rpm limits need PostgreSQL.
This hook, loaded by the proxy from beside its config (`general_settings.custom_auth`),
answers as a proxy with virtual keys does: the master key and each virtual key pass, each
key's `rpm_limit` is enforced by the proxy's own rate limiter (HTTP 429 with Retry-After
past it), and any other key is refused with HTTP 401.

Keys come from the proxy's environment, never its config file: `LITELLM_MASTER_KEY`, and
`TAILCAL_PROXY_KEYS`, a JSON object {key: {"alias": name, "rpm": limit or null}}. The proxy
sees only the alias: its logs, rate-limit buckets and error messages never hold a key.

It runs inside the proxy's own environment (.venv-gateway): fastapi and litellm.proxy are
imported there, in the function, so importing this module elsewhere loads nothing.
"""

from __future__ import annotations

import json
import os
import secrets

KEYS_ENV = "TAILCAL_PROXY_KEYS"
MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
REFUSED = "Authentication Error: the key is not one of this gateway's keys"


def _keys() -> list[tuple[str, str, int | None]]:
    """(key, alias, rpm limit) for the master key and every virtual key."""
    keys = [(os.environ[MASTER_KEY_ENV], "master", None)]
    for key, spec in json.loads(os.environ.get(KEYS_ENV, "{}")).items():
        keys.append((key, spec["alias"], spec.get("rpm")))
    return keys


async def user_api_key_auth(request, api_key: str):
    """The proxy's key check: the key's identity (alias, rpm limit), or HTTP 401."""
    from fastapi import HTTPException
    from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

    # Every key is compared, in constant time, so the answer's timing does not say which matched.
    matches = [(alias, rpm) for key, alias, rpm in _keys() if secrets.compare_digest(api_key.encode(), key.encode())]
    if not matches:
        raise HTTPException(status_code=401, detail=REFUSED)
    alias, rpm = matches[0]
    role = LitellmUserRoles.PROXY_ADMIN if alias == "master" else LitellmUserRoles.INTERNAL_USER
    return UserAPIKeyAuth(api_key=alias, key_alias=alias, user_role=role, rpm_limit=rpm)

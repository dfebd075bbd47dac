"""Versioned prompt templates (`<scoring.prompts_dir>/<name>-v<N>.yaml`), locked once used.

A template's content digest is recorded in Redis the first time it is used. If a later
run finds the same name and version with another digest while cache entries exist, the
template was edited in place: that would silently mix scores from two prompts under one
cache namespace, so it is refused and the fix (a new version file) is named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import redis
import yaml

from tasks.errors import PromptTemplateError


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    system: str
    user: str
    response_schema: dict

    @property
    def id(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def digest(self) -> str:
        content = json.dumps([self.system, self.user, self.response_schema], sort_keys=True)
        return hashlib.sha256(content.encode()).hexdigest()[:16]


def load_template(template_id: str, prompts_dir: Path) -> PromptTemplate:
    """Load `<prompts_dir>/<template_id>.yaml`, checking name/version match the file name."""
    path = prompts_dir / f"{template_id}.yaml"
    if not path.exists():
        available = ", ".join(sorted(p.stem for p in prompts_dir.glob("*.yaml"))) or "none"
        raise PromptTemplateError(
            f"prompt template {template_id} not found in {prompts_dir} (available: {available}): "
            "set scoring.prompt to one of them, or scoring.prompts_dir to the folder that holds yours"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    missing = [key for key in ("name", "version", "system", "user", "response_schema") if key not in raw]
    if missing:
        raise PromptTemplateError(f"{path}: missing keys {missing}")
    template = PromptTemplate(raw["name"], int(raw["version"]), raw["system"], raw["user"], raw["response_schema"])
    if template.id != template_id:
        raise PromptTemplateError(f"{path}: declares {template.id}; the file name must match name-vVERSION")
    return template


def lock_template(client: redis.Redis, template: PromptTemplate, cache_prefix: str) -> None:
    """Record the template's digest; refuse an in-place edit of a version that has cache entries."""
    key = f"tailcal:prompt:{template.id}"
    recorded = client.get(key)
    if recorded is None or recorded.decode() == template.digest:
        client.set(key, template.digest)
        return
    has_entries = next(iter(client.scan_iter(match=f"{cache_prefix}:{template.id}:*:e:*", count=1000)), None)
    if has_entries is None:
        client.set(key, template.digest)
        return
    raise PromptTemplateError(
        f"prompt template {template.id} was edited after it had cached scores: revert the edit, "
        f"or save it as {template.name}-v{template.version + 1}.yaml and set scoring.prompt to it"
    )

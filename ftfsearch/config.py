"""Settings: flags > environment (FTF_*, QDRANT_URL, QDRANT_API_KEY) > config file > defaults.

The config file is TOML at ``$FTF_CONFIG`` or ``<user config dir>/ftfsearch/config.toml`` with
the same keys as the fields below (e.g. ``collection = "tiles"``, ``qdrant_url = "..."``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from platformdirs import user_config_dir, user_data_dir

from ftfsearch.errors import BadInput

if TYPE_CHECKING:
    from ftfsearch.store.base import Store

APP_NAME = "ftfsearch"
"""The directory name under the user's config and data directories."""
CONFIG_FILE_NAME = "config.toml"
CONFIG_ENV_VAR = "FTF_CONFIG"
DEFAULT_COLLECTION = "tiles"

# Environment variable for each setting.
ENV_VARS = {
    "store_dir": "FTF_STORE",
    "qdrant_url": "QDRANT_URL",
    "qdrant_api_key": "QDRANT_API_KEY",
    "collection": "FTF_COLLECTION",
    "model": "FTF_MODEL",
    "device": "FTF_DEVICE",
    "timeout": "FTF_TIMEOUT",
    "stack_dir": "FTF_STACK_DIR",
}


@dataclass(frozen=True)
class Settings:
    """Where the store is, which collection and model, and on which device."""

    store_dir: Path | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = field(default=None, repr=False)
    collection: str = DEFAULT_COLLECTION
    model: str | None = None
    device: str = "auto"
    timeout: float = 30.0
    stack_dir: Path | None = None
    """Where ``ingest --stack`` writes the VRTs of band-per-file scenes (their scenes' paths)."""

    @property
    def resolved_store_dir(self) -> Path:
        """The embedded store directory: the configured one or the user data directory."""
        return self.store_dir or Path(user_data_dir(APP_NAME)) / "store"

    @property
    def resolved_stack_dir(self) -> Path:
        """The VRT directory of band stacks: the configured one or the user data directory."""
        return self.stack_dir or Path(user_data_dir(APP_NAME)) / "stacks"

    def open_store(self, *, read_only: bool = False) -> Store:
        """The store these settings name: the server at ``qdrant_url`` when one is set, else the
        embedded store in :attr:`resolved_store_dir` (what every command and ``serve`` open)."""
        from ftfsearch.store import open_store

        return open_store(
            collection=self.collection,
            store_dir=None if self.qdrant_url else self.resolved_store_dir,
            qdrant_url=self.qdrant_url,
            api_key=self.qdrant_api_key,
            timeout=self.timeout,
            read_only=read_only,
        )

    def push_source(self, qdrant_url: str | None) -> "Settings":
        """The settings of a push's source: the server ``qdrant_url`` names, else the embedded store.
        ``QDRANT_URL`` and the config file's ``qdrant_url`` are not read for it: a push's server is
        usually its target (``PushRequest.to``, keyed by ``QDRANT_API_KEY``)."""
        return replace(self, qdrant_url=qdrant_url or None)

    def redacted(self) -> dict[str, Any]:
        """Settings safe to show or log: the API key is never included."""
        return {
            "store": str(self.resolved_store_dir) if not self.qdrant_url else None,
            "qdrant_url": self.qdrant_url,
            "api_key": "set" if self.qdrant_api_key else None,
            "collection": self.collection,
            "model": self.model or "default",
            "device": self.device,
            "timeout": self.timeout,
        }


def _coerce(name: str, value: Any, source: str) -> Any:
    if value is None or value == "":
        return None
    if name in ("store_dir", "stack_dir"):
        return Path(str(value)).expanduser()
    if name == "timeout":
        try:
            timeout = float(value)
        except (TypeError, ValueError) as exc:
            raise BadInput(f"{source}: timeout {value!r} is not a number of seconds") from exc
        if timeout <= 0:
            raise BadInput(f"{source}: timeout must be positive")
        return timeout
    return str(value)


def config_file_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV_VAR) or Path(user_config_dir(APP_NAME)) / CONFIG_FILE_NAME)


def _from_file(path: Path) -> dict[str, Any]:
    try:
        if not path.is_file():
            return {}
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise BadInput(f"config file {path}: cannot be read as TOML ({exc}); fix or remove it") from exc
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadInput(f"config file {path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return {k: _coerce(k, v, f"config file {path}") for k, v in data.items()}


def load_settings(**flags: Any) -> Settings:
    """Resolve settings; ``flags`` are CLI values where None means 'not given'."""
    values: dict[str, Any] = {}
    values.update({k: v for k, v in _from_file(config_file_path()).items() if v is not None})
    for name, var in ENV_VARS.items():
        env_value = _coerce(name, os.environ.get(var), f"environment variable {var}")
        if env_value is not None:
            values[name] = env_value
    for name, value in flags.items():
        if name not in ENV_VARS:
            raise TypeError(f"unknown setting {name}")
        coerced = _coerce(name, value, f"--{name.replace('_', '-')}")
        if coerced is not None:
            values[name] = coerced
    return replace(Settings(), **values)

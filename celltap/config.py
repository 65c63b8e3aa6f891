"""Config loading every plane shares: read a YAML file into plain data, or one clear error line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from celltap.user_errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem, worded as the one line the user sees (it names file and key)."""


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; unreadable files and bad YAML become a ConfigError naming the file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None

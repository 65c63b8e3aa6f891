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
        raise ConfigError(f"{path}: {yaml_problem(exc)}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parse error as one line: where (line, column) and what (PyYAML's own text spans lines)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return " ".join(f"not valid YAML{where}: {what}{f' ({context})' if context else ''}".split())

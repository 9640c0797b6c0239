"""Where settings come from (the environment, `.env`, `quotaflow.toml`), and messages
that name the source when one of them is wrong."""

from __future__ import annotations

import difflib
import io
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import PydanticBaseSettingsSource
from pydantic_settings import SettingsError as ParseError

ENV_PREFIX = "QUOTAFLOW_"
ENV_FILE = ".env"
TOML_FILE = "quotaflow.toml"

_DEPLOYMENTS_EXAMPLE = (
    '[{"name": "gpt4o", "model": "gpt-4o-mini", "api_key": "sk-...", "tpm": 450000, "rpm": 2700}]'
)


class SourceError(ValueError):
    """A settings file that cannot be read or parsed; the message names it."""


class KnownFieldsOnly(PydanticBaseSettingsSource):
    """A `.env` file may hold other tools' variables: read only the settings' fields.

    (QUOTAFLOW_* names in it that match no setting are reported by `unknown_variables`.)
    """

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self.source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {k: v for k, v in self.source().items() if k in fields}


class Sources:
    """What each source holds, read once, to say where a wrong value came from."""

    def __init__(self, *, environ: Mapping[str, str], env_file: Path, toml_file: Path) -> None:
        self.environ = environ
        self.env_file = env_file
        self.toml_file = toml_file
        self.dotenv = read_env_file(env_file)
        self.toml = read_toml(toml_file)

    def origin(self, field: str) -> str:
        """Where `field`'s value comes from (by precedence), or "" for a default."""
        name = ENV_PREFIX + field.upper()
        if any(k.upper() == name and v for k, v in self.environ.items()):
            return f"from the environment variable {name}"
        if any(k.upper() == name and v for k, v in self.dotenv.items()):
            return f"from {name} in {self.env_file}"
        if field in self.toml:
            return f"from {self.toml_file}"
        return ""

    def raw(self, field: str) -> Any:
        """`field`'s value as its source holds it (by precedence), or None."""
        name = ENV_PREFIX + field.upper()
        for values in (self.environ, self.dotenv):
            found = [v for k, v in values.items() if k.upper() == name and v]
            if found:
                return found[0]
        return self.toml.get(field)

    def unknown(self, fields: Iterable[str]) -> list[str]:
        """One message per QUOTAFLOW_* name that matches no field, naming the closest."""
        known = list(fields)
        messages = []
        for source, names in (("environment", self.environ), (str(self.env_file), self.dotenv)):
            for name in sorted(names):
                if not name.upper().startswith(ENV_PREFIX):
                    continue
                field = name[len(ENV_PREFIX) :].lower().split("__", 1)[0]
                if field in known:
                    continue
                close = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
                hint = (
                    f"did you mean {ENV_PREFIX}{close[0].upper()}?"
                    if close
                    else "the README lists the settings"
                )
                messages.append(f"{name} ({source}) is not a quotaflow setting, ignored; {hint}")
        return messages

    def describe(self, exc: ParseError) -> str:
        """pydantic-settings' 'error parsing value for field "x" from source "Y"', readable."""
        found = re.search(r'field "(\w+)" from source "(\w+)"', str(exc))
        if found is None:
            return f"invalid quotaflow settings: {exc}"
        field, source = found.groups()
        name = ENV_PREFIX + field.upper()
        where = {
            "EnvSettingsSource": f"the environment variable {name}",
            "DotEnvSettingsSource": f"{name} in {self.env_file}",
            "TomlConfigSettingsSource": f"{field} in {self.toml_file}",
        }.get(source, f"{field} (from {source})")
        cause = exc.__cause__
        why = f"is not valid JSON ({cause})" if cause is not None else "cannot be parsed"
        example = f", e.g. '{_DEPLOYMENTS_EXAMPLE}'" if field == "deployments" else ""
        return f"{where} {why}: it must be JSON{example}"


def read_env_file(path: Path) -> dict[str, str | None]:
    """The variables of a `.env` file ({} when there is none)."""
    if not path.is_file():
        return {}
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path}: not UTF-8 text (byte {exc.start}); it must hold NAME=value lines"
        ) from exc
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read: {exc.strerror}") from exc
    values: dict[str, str | None] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = (binding.original.string.strip().splitlines() or [""])[0][:60]
            raise SourceError(
                f"{path} line {binding.original.line}: cannot parse {line!r}; "
                "expected NAME=value (quote a value that holds spaces or #)"
            )
        if binding.key is not None:
            values[binding.key] = binding.value
    return values


def read_toml(path: Path) -> dict[str, Any]:
    """The table of a TOML file ({} when there is none)."""
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SourceError(f"{path}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read: {exc.strerror}") from exc

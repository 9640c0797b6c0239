"""quotaflow settings: read once at the edge (app start, CLI), passed down as objects."""

from settings.config import (
    Settings,
    describe_validation_error,
    load_settings,
    redact_url,
    settings_env,
)
from settings.deployment import (
    AccountingMode,
    DeploymentSettings,
    LimiterKind,
    ProviderKind,
    SettingsError,
)

__all__ = [
    "AccountingMode",
    "DeploymentSettings",
    "LimiterKind",
    "ProviderKind",
    "Settings",
    "SettingsError",
    "describe_validation_error",
    "load_settings",
    "redact_url",
    "settings_env",
]

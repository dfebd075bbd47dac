"""The error hierarchy: every message says what was wrong and what to do about it."""


class TailcalError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(TailcalError):
    """A configuration file or environment variable is invalid."""


class PoolSchemaError(TailcalError):
    """A candidate pool file lacks a required column or has a wrong type."""


class EmptyPoolError(TailcalError):
    """The candidate pool holds no rows after filtering."""


class PoolAccessError(TailcalError):
    """The candidate pool's storage could not be listed or read (credentials, endpoint, permissions)."""


class ServiceError(TailcalError):
    """An embedded or external service (Valkey/Redis, MLflow) could not be reached or started."""


class GatewayError(TailcalError):
    """The gateway could not be used (bad URL, missing key, every model failing)."""


class PromptTemplateError(TailcalError):
    """A prompt template is missing, malformed, or was edited in place after use."""


class SelectionError(TailcalError):
    """A calibration set cannot be selected as asked (K out of range, too few eligible candidates)."""

"""The error hierarchy: every message says what was wrong and what to do about it."""


class TailcalError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(TailcalError):
    """A configuration file or environment variable is invalid."""


class PoolSchemaError(TailcalError):
    """A candidate pool file lacks a required column or has a wrong type."""


class EmptyPoolError(TailcalError):
    """The candidate pool holds no rows after filtering."""


class ServiceError(TailcalError):
    """An embedded or external service (Valkey/Redis, MLflow) could not be reached or started."""

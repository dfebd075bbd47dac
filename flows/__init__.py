"""Prefect flows that wire the stages in `tasks/` together, and the `tailcal` command (`cli`).

Imports go flows → tasks only. Importing this package changes nothing: the ephemeral
Prefect settings are applied by the command line around a flow run.
"""

"""litellm, imported so that it never reaches for the internet.

At import litellm downloads its model price map unless `LITELLM_LOCAL_MODEL_COST_MAP` is
"True"; offline that download retries for seconds, and in a server process it deadlocks on
the import lock. tailcal registers its own prices (`gateway.models`), so the map packaged
with litellm is all it needs. The variable is set for the import only: the caller's
environment is left as it was. Every tailcal module takes litellm from here.
"""

import os

_SWITCH = "LITELLM_LOCAL_MODEL_COST_MAP"
_saved = os.environ.get(_SWITCH)
os.environ[_SWITCH] = "True"
try:
    import litellm
    from litellm.integrations.custom_logger import CustomLogger
finally:
    if _saved is None:
        del os.environ[_SWITCH]
    else:
        os.environ[_SWITCH] = _saved

__all__ = ["CustomLogger", "litellm"]

"""VLM difficulty scoring: gateway client, near-duplicate cache, budget ledger, passes.

litellm fetches its price map from the internet at import unless told not to, so the
switch is set here, before any module of this package imports litellm.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

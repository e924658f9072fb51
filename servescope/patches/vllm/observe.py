"""The observe-only wrapper factories (servescope.patches.observe) bound to vLLM's switch.

``observe_before(where, record)`` runs ``record(rec, self, *args, **kwargs)`` before the original,
``observe_after(where, record)`` runs ``record(rec, self, result, *args, **kwargs)`` after it; both
only while the vLLM hooks are on, and an exception in ``record`` is counted, never raised.
"""

from __future__ import annotations

import functools

from servescope.patches import observe
from servescope.patches.vllm.active import active_recorder

observe_before = functools.partial(observe.observe_before, active=active_recorder)
observe_after = functools.partial(observe.observe_after, active=active_recorder)

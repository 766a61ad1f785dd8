"""A test-only hook: a writer that crashes hard on one event.

Python imports ``sitecustomize`` from ``sys.path`` at start-up; tests put this folder on the
``PYTHONPATH`` of the process under test only. With ``HA_INGESTOR_TEST_CRASH_ON=<text>`` the
writer's converter kills its own process with SIGSEGV when it meets an MQTT event whose topic is
``<text>``, the way a crash in a C library would: no exception, no cleanup, nothing the per-event
isolation can catch. Nothing here is imported by the product or by a normal run.
"""

import os
import signal

_TOPIC = os.environ.get("HA_INGESTOR_TEST_CRASH_ON", "")

if _TOPIC:
    from writer import convert as _convert

    _original = _convert.Converter.convert

    def _convert_or_crash(self, envelope):
        if isinstance(envelope, dict) and envelope.get("topic") == _TOPIC:
            os.kill(os.getpid(), signal.SIGSEGV)
        return _original(self, envelope)

    _convert.Converter.convert = _convert_or_crash

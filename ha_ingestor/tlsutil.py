"""The TLS client context every HTTPS connection to InfluxDB uses (the writer's sinks, the
metrics export), built from a section's ``tls`` settings."""

from __future__ import annotations

import ssl


def client_context(tls) -> ssl.SSLContext:
    """CA file, client certificate and verification as ``<section>.tls`` says."""
    context = ssl.create_default_context(cafile=tls.ca_file if tls else None)
    if tls and tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls and not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context

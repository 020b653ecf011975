"""Schemathesis hooks for scripts/fuzz-api.sh (loaded through SCHEMATHESIS_HOOKS).

Module uploads are raw bytes sent as `application/wasm`: serialize them as binary.
"""

import schemathesis

schemathesis.serializer.alias("application/wasm", "application/octet-stream")

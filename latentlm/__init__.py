"""latentlm: small GPTs for studying KV-cache-efficient attention."""

__version__ = "0.1.0"

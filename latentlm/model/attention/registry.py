"""The attention registry: `type` in an attention config names a class registered here."""

from collections.abc import Callable

ATTENTION: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in ATTENTION:
            raise KeyError(f"attention type {name!r} is registered twice")
        ATTENTION[name] = cls
        return cls

    return add


def build_attention(type: str, **kwargs):  # noqa: A002 - mirrors the config key
    """Instantiate the registered attention class `type` with its keyword arguments."""
    if type not in ATTENTION:
        raise ValueError(f"attention type={type!r} is unknown; choose one of: {', '.join(sorted(ATTENTION))}")
    return ATTENTION[type](**kwargs)

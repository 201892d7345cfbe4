"""What the backbone bases share that is not a layer."""

__all__ = ['resolve_arch']


def resolve_arch(arch, zoo, required):
    """``arch`` as a dict: a name of ``zoo`` (case-insensitive) or a dict holding at least ``required``."""
    if isinstance(arch, str):
        if arch.lower() not in zoo:
            raise KeyError(f'arch {arch!r} is not one of {sorted(set(zoo))}')
        arch = zoo[arch.lower()]
    missing = set(required) - set(arch)
    if missing:
        raise KeyError(f'custom arch is missing {sorted(missing)}')
    return dict(arch)

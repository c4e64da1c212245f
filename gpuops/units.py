"""Kubernetes-style quantities as Cloud Run writes them: CPU ("8", "4000m") and memory ("32Gi")."""
from __future__ import annotations

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def cpu_cores(value: str | int | float) -> float:
    """'8' -> 8.0, '4000m' -> 4.0. ValueError names the value on anything else."""
    text = str(value).strip()
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise ValueError(f"CPU {value!r} is not a quantity like '8' or '4000m'") from None


def memory_bytes(value: str | int) -> int:
    """'32Gi' -> 34359738368, '512M' -> 512000000, '1024' -> 1024 bytes."""
    text = str(value).strip()
    for suffix, factor in (*_BINARY.items(), *_DECIMAL.items()):
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            break
    else:
        number, factor = text, 1
    try:
        return int(float(number) * factor)
    except ValueError:
        raise ValueError(f"memory {value!r} is not a quantity like '32Gi' or '16384Mi'") from None


def memory_gib(value: str | int) -> float:
    return memory_bytes(value) / 2**30

"""Network arithmetic: the names of the precisions, and whether this machine runs bf16 natively.

Inference configs have always said ``fp32``/``bf16``/``fp16``, training configs
``float32``/``bfloat16``; both spellings are accepted everywhere and normalized here.
float32 is the faithful default. bfloat16 runs the network under autocast (float32
weights, canvas, logits and thresholds); on a CPU it is only offered where the CPU has
bf16 instructions (AVX-512 BF16 or AMX on x86, the ``bf16`` feature on ARM) and oneDNN
uses them: elsewhere oneDNN emulates bf16, slower than float32 and less exact, so it is
refused with a one-line error instead.

torch is imported inside the functions: command modules use this while building the parser.
"""

from __future__ import annotations

from functools import lru_cache

from .errors import ConfigError

# every accepted spelling -> the inference name (fp32, bf16, fp16)
ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
}
LONG = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 flags; "bf16" in an ARM Features line


def short_name(precision: str) -> str:
    """``float32``/``fp32`` → ``fp32`` (likewise bf16, fp16); a ConfigError for anything else."""
    name = ALIASES.get(str(precision).strip().lower())
    if name is None:
        raise ConfigError(f"precision {precision!r} is not one of float32 (fp32), bfloat16 (bf16), float16 (fp16)")
    return name


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo; None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def cpu_bf16_support() -> tuple[bool, str]:
    """(whether this CPU runs bf16 convolutions natively, why not if it does not).

    Both must hold: the CPU lists a bf16 instruction flag (where /proc/cpuinfo exists), and
    torch's oneDNN reports bf16 support.
    """
    import torch

    flags = cpu_flags()
    if flags is not None and not flags.intersection(CPU_BF16_FLAGS):
        return False, "this CPU has no bf16 instructions (no avx512_bf16 or amx_bf16 flag in /proc/cpuinfo)"
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return False, "torch's oneDNN on this CPU has no bf16 support"
    return True, ""


def check_precision(precision: str, device_type: str) -> str:
    """The short name of ``precision`` if ``device_type`` (``cpu``/``cuda``) can run it, else a ConfigError."""
    name = short_name(precision)
    if name == "fp16" and device_type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    if name == "bf16" and device_type == "cpu":
        ok, why = cpu_bf16_support()
        if not ok:
            raise ConfigError(f"precision bfloat16 on CPU needs native bf16, and {why}; use --precision float32")
    if name == "bf16" and device_type == "cuda":
        import torch

        if not torch.cuda.is_bf16_supported():
            raise ConfigError("precision bfloat16 needs a GPU with bf16 (Ampere or newer); use --precision float32")
    return name


__all__ = ["ALIASES", "LONG", "check_precision", "cpu_bf16_support", "cpu_flags", "short_name"]

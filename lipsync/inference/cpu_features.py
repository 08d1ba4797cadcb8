"""What the CPU offers the generator's kernels: bf16, VNNI, AVX-512, AVX2 (from /proc/cpuinfo).

``ONEDNN_MAX_CPU_ISA`` caps what oneDNN (PyTorch's CPU convolutions) may use; the same cap
is applied here, so on an AVX-512 machine ``ONEDNN_MAX_CPU_ISA=AVX2`` makes every choice
(bf16 or not, int8 reduced range or not) the one an AVX2-only CPU would get.
ONNX Runtime's own kernels (MLAS) cannot be capped that way: under the cap they still use
whatever the CPU has, so its figures then are not an AVX2-only CPU's (benchmarks/infer.py
says so next to them).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

# oneDNN's ISA names, weakest first, with the cpuinfo flags each one adds.
_ISA_LEVELS = [
    ("SSE41", set()),
    ("AVX", set()),
    ("AVX2", {"avx2", "fma"}),
    ("AVX2_VNNI", {"avx_vnni"}),
    ("AVX2_VNNI_2", {"avx_vnni_int8"}),
    ("AVX512_CORE", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}),
    ("AVX512_CORE_VNNI", {"avx512_vnni"}),
    ("AVX512_CORE_BF16", {"avx512_bf16"}),
    ("AVX10_1_512", {"avx512_fp16"}),
    ("AVX512_CORE_AMX", {"amx_int8", "amx_bf16", "amx_tile"}),
    ("AVX10_1_512_AMX_FP16", {"amx_fp16"}),
]
SHOWN = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuFeatures:
    model: str
    flags: frozenset
    isa_cap: str | None  # ONEDNN_MAX_CPU_ISA when set

    @property
    def native_bf16(self) -> bool:
        """AVX-512 BF16 or AMX: bf16 convolutions run ~2x fp32 (emulated bf16 is ~9x slower)."""
        return bool(self.flags & {"avx512_bf16", "amx_bf16"})

    @property
    def vnni(self) -> bool:
        """u8 x s8 dot products without 16-bit intermediate saturation (int8 keeps full range)."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8"})

    def summary(self) -> str:
        shown = [f for f in SHOWN if f in self.flags]
        cap = f" (capped by ONEDNN_MAX_CPU_ISA={self.isa_cap})" if self.isa_cap else ""
        return f"{self.model}: {' '.join(shown) or 'no AVX2'}{cap}"


def _read_cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_features() -> CpuFeatures:
    model, flags = _read_cpuinfo()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() or None
    names = [name for name, _ in _ISA_LEVELS]
    if cap in names:
        allowed_above = set().union(*(extra for _, extra in _ISA_LEVELS[names.index(cap) + 1:]))
        flags = flags - allowed_above - {f for f in flags if f.startswith(("avx512", "amx"))
                                         and names.index(cap) < names.index("AVX512_CORE")}
    return CpuFeatures(model=model, flags=frozenset(flags), isa_cap=cap)

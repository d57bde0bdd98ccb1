"""The recording's GPU kernels (illustrated_sd/recording/joint_kernels.py) compile for the GPUs the package is timed on.

The other tests run the kernels through Triton's interpreter, on the CPU; it executes them but skips what only the
compiler checks (a kernel that reads a module-level float, for one, compiled nowhere). So here Triton compiles each
kernel, as a GPU would, down to an H100's / H200's machine code (sm_90) and an A100's (sm_80), no GPU needed. It runs
in a process of its own: the interpreter, on for the rest of the tests (conftest.py), must be off to compile.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Pointer arguments by name (the rest: upper-case names are constexprs, `scale` a float, others int32)
POINTERS = {"q_ptr": "*bf16", "k_ptr": "*bf16", "lse_ptr": "*fp32", "kept_ptr": "*i64", "bias_ptr": "*fp32",
            "out_ptr": "*fp32", "image_out_ptr": "*fp32", "text_out_ptr": "*fp32"}
VARIANTS = [  # (kernel, constexprs): every branch a generation takes (Flux's heads of 128, SD3's of 64)
    ("_image_rows_kernel", dict(HAS_BIAS=False, D=128, BLOCK_M=64, BLOCK_KEPT=64, BLOCK_T=64)),
    ("_image_rows_kernel", dict(HAS_BIAS=True, D=64, BLOCK_M=64, BLOCK_KEPT=128, BLOCK_T=64)),
    ("_image_rows_kernel", dict(HAS_BIAS=False, D=256, BLOCK_M=64, BLOCK_KEPT=16, BLOCK_T=64)),
    *[("_text_rows_kernel", dict(WITH_IMAGE=True, WITH_TEXT=True, D=128, BLOCK_KEPT=kept, BLOCK_N=64)) for kept in (16, 32, 64, 128)],
    ("_text_rows_kernel", dict(WITH_IMAGE=False, WITH_TEXT=True, D=64, BLOCK_KEPT=16, BLOCK_N=64)),
    ("_text_rows_kernel", dict(WITH_IMAGE=True, WITH_TEXT=False, D=64, BLOCK_KEPT=32, BLOCK_N=64)),
]


def compile_all(capability: int) -> dict:
    """Compile every variant for ``sm_<capability>``: ``{kernel name + constexprs: "ok" or the compiler's error}``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from illustrated_sd.recording import joint_kernels

    results = {}
    for name, constexprs in VARIANTS:
        kernel = getattr(joint_kernels, name)
        names = kernel.arg_names
        signature = {arg: "constexpr" if arg in constexprs else POINTERS.get(arg, "fp32" if arg == "scale" else "i32") for arg in names}
        source = ASTSource(fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
        key = f"{name} {constexprs}"
        try:
            compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32))
            results[key] = "ok" if compiled.asm["cubin"] and f".entry {name}" in compiled.asm["ptx"] else "no machine code"
        except Exception as err:  # noqa: BLE001  (the compiler's error, reported by the test)
            results[key] = f"{type(err).__name__}: {err}"
    return results


@pytest.mark.parametrize("capability", [90, 80])
def test_the_recording_kernels_compile_for_a_gpu(capability):
    pytest.importorskip("triton", reason="Triton is a dev dependency (pip install -e '.[dev]')")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, "-c", f"import json, tests.test_joint_kernels as t; print(json.dumps(t.compile_all({capability})))"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(results) == len(VARIANTS)
    assert all(result == "ok" for result in results.values()), json.dumps(results, indent=1)

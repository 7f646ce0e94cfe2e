"""Diagnostic: does an error thrown inside libvlmcore come back as a status
in this process (with and without torch imported first)?"""
import ctypes
import os
import sys

if len(sys.argv) > 1 and sys.argv[1] == "torch":
    import torch  # noqa: F401
lib = ctypes.CDLL(os.environ["VLMSERVE_LIB"])
lib.vlm_last_error.restype = ctypes.c_char_p
out = ctypes.c_int64()
st = lib.vlm_w4a16_packed_sizes(256, 100, 64, ctypes.byref(out), ctypes.byref(out))
print("packed_sizes status", st, lib.vlm_last_error(), flush=True)
st = lib.vlm_w4a16_workspace_bytes(2, 100, 128, 64, ctypes.byref(out))
print("workspace status", st, lib.vlm_last_error(), flush=True)
st = lib.vlm_model_finalize(None)
print("finalize status", st, lib.vlm_last_error(), flush=True)
maps = open("/proc/self/maps").read()
print(sorted({line.split()[-1] for line in maps.splitlines() if "libstdc++" in line or "libgcc_s" in line}))

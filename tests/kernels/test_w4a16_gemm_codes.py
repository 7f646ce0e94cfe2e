"""The general w4a16 kernel's codes form (the default up to 16 rows, native/cuda/w4a16_gemm.cu: the swapped mma
form, the 4-bit codes multiplied and each group's fp32 sums scaled) against the float32 reference on fresh
random inputs with a poisoned output, in a fresh process (the library reads the setting once): with the decode
kernel taking rows 1-4 as on Hopper, and with it off so that every row count from 1 to 17 of
check_w4a16_shapes.py runs the general kernel (what pre-Hopper GPUs do); and the dequantizing form that
VLM_W4A16_GEMM_CODES=0 keeps up to 16 rows. Needs a CUDA GPU."""
from __future__ import annotations

import pytest

from w4a16_reference import run_shape_checks

pytestmark = pytest.mark.gpu


def test_codes_form_matches_reference():
    run_shape_checks({"VLM_W4A16_GEMM_CODES": "1"})


def test_codes_form_matches_reference_at_every_row_count():
    run_shape_checks({"VLM_W4A16_GEMM_CODES": "1", "VLM_W4A16_DECODE": "0"})


def test_dequantizing_form_matches_reference_at_every_row_count():
    run_shape_checks({"VLM_W4A16_GEMM_CODES": "0", "VLM_W4A16_DECODE": "0"})

// Stands in for CUTLASS's device tensor-fill utilities (cuRAND kernels) on the include path of
// w4a16_cutlass.cu: cutlass/util/mixed_dtype_utils.hpp includes them and uses none of them, and the
// toolkits this library builds with need not ship cuRAND's headers.
#pragma once

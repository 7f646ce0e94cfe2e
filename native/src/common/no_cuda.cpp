// Built instead of the CUDA sources when no CUDA compiler was found.
#include "vlmcore.h"

extern "C" int vlm_cuda_device_count(void) { return 0; }

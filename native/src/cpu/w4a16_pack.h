// The tensor-core w4a16 weight layout (host side; the CUDA kernel in
// native/cuda/w4a16_gemm.cu consumes it).
//
// Weights: for each strip of 64 output columns and each step of 16 inputs, a
// warp reads 512 contiguous bytes, 16 per lane. Lane l (g = l/4, t = l%4)
// gets the 32 four-bit codes of its m16n8k16 B fragments for the 8 n8 tiles
// of the strip: word w holds tiles 2w and 2w+1; for tile 2w+j the codes of
// k = 2t, 2t+1, 2t+8, 2t+9 (column 8(2w+j) + g) sit at bits 8j+0, 8j+16,
// 8j+4, 8j+20, so `(word >> 4i) & 0x000F000F` is directly one half2 pair.
//
// Scales and zeros: per strip and group, 64 scales then 64 zero points, with
// column 8j + g stored at g*8 + j so a lane's 8 values are one 16-byte load.
// Zero points are stored as (magic + z), magic = 1024 (fp16) or 128 (bf16),
// the value the code's bit trick produces for q = 0.
#pragma once
#include <cstdint>

namespace vlm {

constexpr int kW4StripN = 64;

// Shapes the tensor-core kernel accepts (throws vlm::Error otherwise).
void check_w4a16_shape(int M, int N, int K, int group);
int64_t w4a16_weight_bytes(int n, int k);
int64_t w4a16_scale_zero_bytes(int n, int k, int group_size);
void w4a16_pack(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, int n, int k,
                int group_size, bool bf16, uint32_t* packed, uint16_t* scale_zero);

}  // namespace vlm

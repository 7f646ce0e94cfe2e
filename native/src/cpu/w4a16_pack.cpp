#include "cpu/w4a16_pack.h"

#include "common/error.h"
#include "common/numeric.h"

namespace vlm {
namespace {

constexpr int kAwqShift[8] = {0, 16, 4, 20, 8, 24, 12, 28};  // AutoAWQ nibble of column j in a group of 8

inline uint32_t awq_code(const int32_t* packed, int row, int n, int cols8) {
  return (static_cast<uint32_t>(packed[(int64_t)row * cols8 + n / 8]) >> kAwqShift[n % 8]) & 15u;
}

}  // namespace

void check_w4a16_shape(int M, int N, int K, int group) {
  VLM_CHECK_ARG(M >= 1 && N >= 1 && K >= 1, "w4a16: M, N, K must be positive");
  VLM_CHECK_ARG(N % 64 == 0, "w4a16: N (" << N << ") must be a multiple of 64");
  VLM_CHECK_ARG(group == 64 || group == 128, "w4a16: group size must be 64 or 128, got " << group);
  VLM_CHECK_ARG(K % group == 0 && K % 64 == 0, "w4a16: K (" << K << ") must be a multiple of the group size");
}

int64_t w4a16_weight_bytes(int n, int k) { return (int64_t)n * k / 2; }

int64_t w4a16_scale_zero_bytes(int n, int k, int group_size) {
  return (int64_t)(n / kW4StripN) * (k / group_size) * 2 * kW4StripN * 2;
}

void w4a16_pack(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, int n, int k,
                int group_size, bool bf16, uint32_t* packed, uint16_t* sz) {
  VLM_CHECK_ARG(n % kW4StripN == 0, "w4a16: N (" << n << ") must be a multiple of 64");
  VLM_CHECK_ARG(group_size == 64 || group_size == 128, "w4a16: group size must be 64 or 128");
  VLM_CHECK_ARG(k % group_size == 0, "w4a16: group size " << group_size << " does not divide K " << k);
  const int cols8 = n / 8, strips = n / kW4StripN, ksteps = k / 16, groups = k / group_size;
  for (int s = 0; s < strips; ++s)
    for (int kk = 0; kk < ksteps; ++kk)
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, t = lane % 4;
        uint32_t* out = packed + (((int64_t)s * ksteps + kk) * 32 + lane) * 4;
        for (int w = 0; w < 4; ++w) {
          uint32_t word = 0;
          for (int j = 0; j < 2; ++j) {
            const int col = s * kW4StripN + (2 * w + j) * 8 + g;
            const int k0 = kk * 16 + 2 * t;
            word |= awq_code(qweight, k0, col, cols8) << (8 * j + 0);
            word |= awq_code(qweight, k0 + 1, col, cols8) << (8 * j + 16);
            word |= awq_code(qweight, k0 + 8, col, cols8) << (8 * j + 4);
            word |= awq_code(qweight, k0 + 9, col, cols8) << (8 * j + 20);
          }
          out[w] = word;
        }
      }
  const float magic = bf16 ? 128.f : 1024.f;
  for (int s = 0; s < strips; ++s)
    for (int gi = 0; gi < groups; ++gi) {
      uint16_t* out = sz + ((int64_t)s * groups + gi) * 2 * kW4StripN;
      for (int p = 0; p < kW4StripN; ++p) {
        const int col = s * kW4StripN + p, j = p / 8, g = p % 8;
        const float scale = f16_to_f32(scales[(int64_t)gi * n + col]);
        const float zero = magic + static_cast<float>(awq_code(qzeros, gi, col, cols8));
        out[g * 8 + j] = bf16 ? f32_to_bf16(scale) : f32_to_f16(scale);
        out[kW4StripN + g * 8 + j] = bf16 ? f32_to_bf16(zero) : f32_to_f16(zero);
      }
    }
}

}  // namespace vlm

// y = x · Wᵀ (+ b) on the CPU, for dense (f32/f16/bf16) and AWQ 4-bit weights.
//
// Weights live in "panels" of kPanel = 32 output channels: panel p holds,
// for every input index k, the 32 weights W[p*32 + j][k] contiguously, so the
// kernel streams one panel front to back while a register tile of up to
// kRowTile activation rows accumulates against it. The out dimension is
// padded with zero rows to a multiple of 32.
//
// Every output element is reduced over k in ascending order whatever the
// number of rows M, so a request gets bit-identical results alone or batched.
#pragma once
#include <cstdint>
#include <vector>

namespace vlm {

constexpr int kPanel = 32;

enum class WeightKind { F32, F16, BF16, AWQ4 };

struct Linear {
  int out = 0;            // N
  int in = 0;             // K
  int padded_out = 0;     // N rounded up to kPanel
  WeightKind kind = WeightKind::F32;
  int group_size = 0;     // AWQ4 only
  std::vector<float> w32;       // F32 panels [P][K][32]
  std::vector<uint16_t> w16;    // F16 / BF16 panels [P][K][32]
  std::vector<uint8_t> q4;      // AWQ4 panels [P][K][16]: byte j = col j (low) | col j+16 (high)
  std::vector<float> scale;     // AWQ4 [P][K/g][32]
  std::vector<float> neg_zero_scale;  // AWQ4 [P][K/g][32]: -zero*scale, so w = q*s + this
  std::vector<float> bias;      // [N] or empty

  bool empty() const { return out == 0; }
  int64_t weight_bytes() const;
  // Weight W[n][k] as fp32 (for embedding lookup and tests).
  float at(int n, int k) const;
};

// Packs a dense row-major [out][in] tensor of vlm dtype F32/F16/BF16, keeping
// its storage precision.
Linear pack_dense(int dtype, const void* data, int out, int in);

// Repacks AutoAWQ "gemm" tensors: qweight int32 [in][out/8] with the nibble
// order 0,2,4,6,1,3,5,7; qzeros int32 [in/g][out/8] in the same order; scales
// fp16 [in/g][out].
Linear pack_awq(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales,
                int out, int in, int group_size);

// y[M][out] = x[M][in] · Wᵀ + b. Threads split the panels.
void linear_forward(const Linear& w, const float* x, int M, float* y);

}  // namespace vlm

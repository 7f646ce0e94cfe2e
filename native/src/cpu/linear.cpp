#include "cpu/linear.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/numeric.h"

namespace vlm {
namespace {

#if defined(__AVX512F__)
constexpr int kRowTile = 12;  // 12 rows x 2 vectors = 24 accumulators of 32 registers
#else
constexpr int kRowTile = 4;
#endif

// Nibble of AutoAWQ's packing that holds column j of an 8-column group.
constexpr int kAwqShift[8] = {0, 16, 4, 20, 8, 24, 12, 28};

int padded(int n) { return (n + kPanel - 1) / kPanel * kPanel; }

// Accumulates rows [0,R) of x against one panel whose k-th 32-wide weight row
// is produced by `row(k, lo, hi)`; writes y[r][col0 .. col0+ncols).
template <int R, class RowFn>
inline void tile(const float* x, int ldx, int K, RowFn&& row, float* y, int ldy, int ncols) {
  v16f acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = v16f{};
  for (int k = 0; k < K; ++k) {
    v16f lo, hi;
    row(k, lo, hi);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const v16f a = splat16(x[r * ldx + k]);
      acc[r][0] += a * lo;
      acc[r][1] += a * hi;
    }
  }
  for (int r = 0; r < R; ++r) {
    float tmp[32];
    store16(tmp, acc[r][0]);
    store16(tmp + 16, acc[r][1]);
    std::memcpy(y + r * ldy, tmp, sizeof(float) * ncols);
  }
}

template <class RowFn>
void rows_against_panel(const float* x, int M, int K, RowFn&& row, float* y, int ldy, int ncols) {
  int m = 0;
  for (; m + kRowTile <= M; m += kRowTile)
    tile<kRowTile>(x + (int64_t)m * K, K, K, row, y + (int64_t)m * ldy, ldy, ncols);
  const float* xr = x + (int64_t)m * K;
  float* yr = y + (int64_t)m * ldy;
  switch (M - m) {  // remainder tiles keep the same k order, so results do not depend on M
    case 0: break;
#define VLM_TAIL(n) case n: tile<n>(xr, K, K, row, yr, ldy, ncols); break;
    VLM_TAIL(1) VLM_TAIL(2) VLM_TAIL(3)
#if defined(__AVX512F__)
    VLM_TAIL(4) VLM_TAIL(5) VLM_TAIL(6) VLM_TAIL(7) VLM_TAIL(8) VLM_TAIL(9) VLM_TAIL(10) VLM_TAIL(11)
#endif
#undef VLM_TAIL
  }
}

// Expands one AWQ panel row (32 nibbles) with its group's scale and offset.
inline void awq_row(const uint8_t* q, const float* s, const float* nzs, v16f& lo, v16f& hi) {
  v16b b;
  std::memcpy(&b, q, 16);
  const v16f ql = __builtin_convertvector(__builtin_convertvector(b & 15, v16i), v16f);
  const v16f qh = __builtin_convertvector(__builtin_convertvector(b >> 4, v16i), v16f);
  lo = ql * load16(s) + load16(nzs);
  hi = qh * load16(s + 16) + load16(nzs + 16);
}

// Dequantises/widens a whole panel into fp32 [K][32]; used when many rows
// share it, so the conversion is paid once per panel instead of once per tile.
void panel_to_f32(const Linear& w, int p, float* dst) {
  const int K = w.in;
  const int64_t base = (int64_t)p * K * kPanel;
  for (int k = 0; k < K; ++k) {
    v16f lo = v16f{}, hi = v16f{};
    switch (w.kind) {
      case WeightKind::F16:
        lo = f16x16_to_f32(&w.w16[base + k * kPanel]);
        hi = f16x16_to_f32(&w.w16[base + k * kPanel + 16]);
        break;
      case WeightKind::BF16:
        lo = bf16x16_to_f32(&w.w16[base + k * kPanel]);
        hi = bf16x16_to_f32(&w.w16[base + k * kPanel + 16]);
        break;
      case WeightKind::AWQ4: {
        const int64_t g = (int64_t)p * (K / w.group_size) + k / w.group_size;
        awq_row(&w.q4[((int64_t)p * K + k) * 16], &w.scale[g * kPanel],
                &w.neg_zero_scale[g * kPanel], lo, hi);
        break;
      }
      case WeightKind::F32:
        lo = load16(&w.w32[base + k * kPanel]);
        hi = load16(&w.w32[base + k * kPanel + 16]);
        break;
    }
    store16(dst + k * kPanel, lo);
    store16(dst + k * kPanel + 16, hi);
  }
}

void panel_forward(const Linear& w, int p, const float* x, int M, float* y, std::vector<float>& scratch) {
  const int K = w.in;
  const int col0 = p * kPanel;
  const int ncols = std::min(kPanel, w.out - col0);
  float* yp = y + col0;
  const int64_t base = (int64_t)p * K * kPanel;
  if (w.kind == WeightKind::F32 || M > kRowTile) {
    const float* wp = w.w32.data() + (w.kind == WeightKind::F32 ? base : 0);
    if (w.kind != WeightKind::F32) {
      scratch.resize((size_t)K * kPanel);
      panel_to_f32(w, p, scratch.data());
      wp = scratch.data();
    }
    rows_against_panel(x, M, K, [wp](int k, v16f& lo, v16f& hi) {
      lo = load16(wp + k * kPanel);
      hi = load16(wp + k * kPanel + 16);
    }, yp, w.out, ncols);
    return;
  }
  // Few rows: widen/dequantise in registers as the panel streams by.
  switch (w.kind) {
    case WeightKind::F16: {
      const uint16_t* wp = &w.w16[base];
      rows_against_panel(x, M, K, [wp](int k, v16f& lo, v16f& hi) {
        lo = f16x16_to_f32(wp + k * kPanel);
        hi = f16x16_to_f32(wp + k * kPanel + 16);
      }, yp, w.out, ncols);
      break;
    }
    case WeightKind::BF16: {
      const uint16_t* wp = &w.w16[base];
      rows_against_panel(x, M, K, [wp](int k, v16f& lo, v16f& hi) {
        lo = bf16x16_to_f32(wp + k * kPanel);
        hi = bf16x16_to_f32(wp + k * kPanel + 16);
      }, yp, w.out, ncols);
      break;
    }
    case WeightKind::AWQ4: {
      const uint8_t* q = &w.q4[(int64_t)p * K * 16];
      const int g = w.group_size;
      const float* s = &w.scale[(int64_t)p * (K / g) * kPanel];
      const float* z = &w.neg_zero_scale[(int64_t)p * (K / g) * kPanel];
      rows_against_panel(x, M, K, [=](int k, v16f& lo, v16f& hi) {
        const int gi = k / g;
        awq_row(q + k * 16, s + gi * kPanel, z + gi * kPanel, lo, hi);
      }, yp, w.out, ncols);
      break;
    }
    case WeightKind::F32: break;
  }
}

}  // namespace

int64_t Linear::weight_bytes() const {
  return (int64_t)w32.size() * 4 + (int64_t)w16.size() * 2 + (int64_t)q4.size() +
         (int64_t)(scale.size() + neg_zero_scale.size() + bias.size()) * 4;
}

float Linear::at(int n, int k) const {
  const int p = n / kPanel, j = n % kPanel;
  const int64_t idx = ((int64_t)p * in + k) * kPanel + j;
  switch (kind) {
    case WeightKind::F32: return w32[idx];
    case WeightKind::F16: return f16_to_f32(w16[idx]);
    case WeightKind::BF16: return bf16_to_f32(w16[idx]);
    case WeightKind::AWQ4: {
      const uint8_t b = q4[((int64_t)p * in + k) * 16 + (j & 15)];
      const float q = static_cast<float>(j < 16 ? (b & 15) : (b >> 4));
      const int64_t g = ((int64_t)p * (in / group_size) + k / group_size) * kPanel + j;
      return q * scale[g] + neg_zero_scale[g];
    }
  }
  return 0.f;
}

Linear pack_dense(int dtype, const void* data, int out, int in) {
  VLM_CHECK_ARG(dtype == VLM_DTYPE_F32 || dtype == VLM_DTYPE_F16 || dtype == VLM_DTYPE_BF16,
                "dense weights must be F32, F16 or BF16");
  Linear w;
  w.out = out;
  w.in = in;
  w.padded_out = padded(out);
  const int P = w.padded_out / kPanel;
  if (dtype == VLM_DTYPE_F32) {
    w.kind = WeightKind::F32;
    w.w32.assign((size_t)P * in * kPanel, 0.f);
    const float* src = static_cast<const float*>(data);
#pragma omp parallel for
    for (int n = 0; n < out; ++n)
      for (int k = 0; k < in; ++k)
        w.w32[((int64_t)(n / kPanel) * in + k) * kPanel + n % kPanel] = src[(int64_t)n * in + k];
  } else {
    w.kind = dtype == VLM_DTYPE_F16 ? WeightKind::F16 : WeightKind::BF16;
    w.w16.assign((size_t)P * in * kPanel, 0);
    const uint16_t* src = static_cast<const uint16_t*>(data);
#pragma omp parallel for
    for (int n = 0; n < out; ++n)
      for (int k = 0; k < in; ++k)
        w.w16[((int64_t)(n / kPanel) * in + k) * kPanel + n % kPanel] = src[(int64_t)n * in + k];
  }
  return w;
}

Linear pack_awq(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales, int out,
                int in, int group_size) {
  VLM_CHECK_ARG(group_size > 0 && in % group_size == 0,
                "AWQ group size " << group_size << " does not divide in_features " << in);
  VLM_CHECK_ARG(out % 8 == 0, "AWQ out_features " << out << " is not a multiple of 8");
  Linear w;
  w.kind = WeightKind::AWQ4;
  w.out = out;
  w.in = in;
  w.group_size = group_size;
  w.padded_out = padded(out);
  const int P = w.padded_out / kPanel;
  const int G = in / group_size;
  const int packed_cols = out / 8;
  w.q4.assign((size_t)P * in * 16, 0);
  w.scale.assign((size_t)P * G * kPanel, 0.f);
  w.neg_zero_scale.assign((size_t)P * G * kPanel, 0.f);
  // Threads split whole panels: columns j and j + 16 of a panel share each code byte.
#pragma omp parallel for schedule(static)
  for (int p = 0; p < P; ++p) {
    for (int n = p * kPanel; n < std::min(out, (p + 1) * kPanel); ++n) {
      const int j = n % kPanel;
      const int shift = kAwqShift[n % 8];
      for (int k = 0; k < in; ++k) {
        const uint8_t q = (qweight[(int64_t)k * packed_cols + n / 8] >> shift) & 15;
        uint8_t& dst = w.q4[((int64_t)p * in + k) * 16 + (j & 15)];
        dst |= j < 16 ? q : static_cast<uint8_t>(q << 4);
      }
      for (int g = 0; g < G; ++g) {
        const float z = static_cast<float>((qzeros[(int64_t)g * packed_cols + n / 8] >> shift) & 15);
        const float s = f16_to_f32(scales[(int64_t)g * out + n]);
        w.scale[((int64_t)p * G + g) * kPanel + j] = s;
        w.neg_zero_scale[((int64_t)p * G + g) * kPanel + j] = -z * s;
      }
    }
  }
  return w;
}

void linear_forward(const Linear& w, const float* x, int M, float* y) {
  const int P = w.padded_out / kPanel;
#pragma omp parallel
  {
    std::vector<float> scratch;
#pragma omp for schedule(static)
    for (int p = 0; p < P; ++p) panel_forward(w, p, x, M, y, scratch);
  }
  if (!w.bias.empty())
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < w.out; ++n) y[(int64_t)m * w.out + n] += w.bias[n];
}

}  // namespace vlm

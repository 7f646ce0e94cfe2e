// Scalar conversions between the storage precisions the library accepts and
// the fp32 it computes in, plus the 64-byte vector type the CPU kernels use.
#pragma once
#include <cstdint>
#include <cstring>

namespace vlm {

// 16 floats: one AVX-512 register, two AVX2 registers; GCC splits as needed.
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint8_t v16b __attribute__((vector_size(16)));
typedef uint16_t v16h __attribute__((vector_size(32)));
typedef uint32_t v16u __attribute__((vector_size(64)));

inline v16f load16(const float* p) { v16f v; std::memcpy(&v, p, sizeof v); return v; }
inline void store16(float* p, v16f v) { std::memcpy(p, &v, sizeof v); }
inline v16f splat16(float x) { return v16f{} + x; }
inline float hsum16(v16f v) {
  float s = 0.f;
  for (int i = 0; i < 16; ++i) s += v[i];
  return s;
}

inline float f16_to_f32(uint16_t h) {
  _Float16 x;
  std::memcpy(&x, &h, 2);
  return static_cast<float>(x);
}
inline uint16_t f32_to_f16(float f) {
  _Float16 x = static_cast<_Float16>(f);  // round to nearest even
  uint16_t h;
  std::memcpy(&h, &x, 2);
  return h;
}
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even (NaN inputs are not expected)
  return static_cast<uint16_t>(u >> 16);
}

// 16 halfs (fp16 bits) -> 16 floats, vectorised by F16C/AVX-512 conversions.
inline v16f f16x16_to_f32(const uint16_t* p) {
  typedef _Float16 v16hf __attribute__((vector_size(32)));
  v16hf h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, v16f);
}
inline v16f bf16x16_to_f32(const uint16_t* p) {
  v16h h;
  std::memcpy(&h, p, sizeof h);
  v16u u = __builtin_convertvector(h, v16u) << 16;
  v16f f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Reads element i of a tensor stored as F32 / F16 / BF16 (vlm_dtype values).
inline float load_as_f32(int dtype, const void* data, int64_t i) {
  switch (dtype) {
    case 1: return static_cast<const float*>(data)[i];
    case 2: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
    default: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
  }
}

}  // namespace vlm

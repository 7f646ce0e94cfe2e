// An integer setting from the environment, for the kernels' host code (tuning and off switches such
// as VLM_W4A16_DECODE or VLM_DENSE_DECODE): `fallback` where the variable is unset or empty.
#pragma once
#include <cstdlib>

namespace vlm {
namespace cuda {

inline int env_int(const char* name, int fallback) {
  const char* e = std::getenv(name);
  return e && *e ? std::atoi(e) : fallback;
}

}  // namespace cuda
}  // namespace vlm

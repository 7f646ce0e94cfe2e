// The one place where exceptions become status codes and the thread-local
// last-error message (used by every C entry point).
#pragma once
#include <new>
#include <string>

#include "common/error.h"

namespace vlm {

std::string& last_error();  // thread-local, defined in api.cpp

template <class F>
int guarded(F&& f) {
  try {
    f();
    return VLM_OK;
  } catch (const Error& e) {
    last_error() = e.what();
    return e.status;
  } catch (const std::bad_alloc&) {
    last_error() = "out of memory";
    return VLM_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    last_error() = std::string("internal error: ") + e.what();
    return VLM_ERR_INTERNAL;
  } catch (...) {
    last_error() = "internal error: unknown exception";
    return VLM_ERR_INTERNAL;
  }
}

}  // namespace vlm

// One error path for the whole library: code throws vlm::Error through
// VLM_CHECK; the C ABI layer (api.cpp) turns it into a status + message.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

#include "vlmcore.h"

namespace vlm {

struct Error : std::runtime_error {
  vlm_status status;
  Error(vlm_status s, const std::string& msg) : std::runtime_error(msg), status(s) {}
};

}  // namespace vlm

#define VLM_CHECK(cond, status, msg)                         \
  do {                                                       \
    if (!(cond)) {                                           \
      std::ostringstream vlm_check_os_;                      \
      vlm_check_os_ << msg;                                  \
      throw ::vlm::Error((status), vlm_check_os_.str());     \
    }                                                        \
  } while (0)

#define VLM_CHECK_ARG(cond, msg) VLM_CHECK(cond, VLM_ERR_INVALID_ARGUMENT, msg)

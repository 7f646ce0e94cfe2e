// Where a step's time goes, for tuning the CUDA backend: with VLM_CUDA_PROFILE=1
// the runner launches every step eagerly, brackets each phase of its kernels
// (norms, each linear, attention, ...) with CUDA events and times the host
// side of the step (building metadata, launching, waiting, and the engine's own
// work between steps). At exit it prints, per kind of step, the mean time of
// each phase to stderr. Off by default: the events and the eager launches cost
// time of their own.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace vlm {
namespace cuda {

class StepProfiler {
 public:
  StepProfiler() = default;
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;
  ~StepProfiler() {
    report();
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }

  // Starts a step of kind `label` (steps of one label are averaged together).
  void begin(const std::string& label) {
    const int64_t t = now();
    label_ = label;
    if (last_end_) host_["engine between steps"] = t - last_end_;
    begin_ = t;
    used_ = 0;
    phases_.clear();
  }
  // GPU work queued on `stream` after this call belongs to `phase` (until the next mark).
  void mark(const char* phase, cudaStream_t stream) {
    if (used_ == pool_.size()) {
      cudaEvent_t e;
      if (cudaEventCreate(&e) != cudaSuccess) return;
      pool_.push_back(e);
    }
    cudaEventRecord(pool_[used_++], stream);
    phases_.push_back(phase);
  }
  void host_phase(const char* name, int64_t since_ns) { host_[name] = now() - since_ns; }
  // After the step's stream was synchronized.
  void end() {
    Stats& s = stats_[label_];
    s.steps += 1;
    for (size_t i = 0; i + 1 < used_; ++i) {
      float ms = 0.f;
      if (cudaEventElapsedTime(&ms, pool_[i], pool_[i + 1]) == cudaSuccess) s.gpu_ms[phases_[i]] += ms;
    }
    if (used_ > 1) {
      float ms = 0.f;
      if (cudaEventElapsedTime(&ms, pool_[0], pool_[used_ - 1]) == cudaSuccess) s.gpu_total_ms += ms;
    }
    for (const auto& [name, ns] : host_) s.host_ms[name] += ns / 1e6;
    last_end_ = now();
    s.wall_ms += (last_end_ - begin_) / 1e6 + (host_.count("engine between steps") ? host_["engine between steps"] / 1e6 : 0);
    host_.clear();
  }
  static int64_t now() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

 private:
  struct Stats {
    int64_t steps = 0;
    double wall_ms = 0, gpu_total_ms = 0;
    std::map<std::string, double> gpu_ms, host_ms;
  };

  void report() const {
    for (const auto& [label, s] : stats_) {
      if (s.steps == 0) continue;
      const double n = (double)s.steps;
      std::fprintf(stderr, "[vlm profile] %s: %lld steps, %.3f ms/step wall, %.3f ms/step GPU (first to last event)\n",
                   label.c_str(), (long long)s.steps, s.wall_ms / n, s.gpu_total_ms / n);
      std::vector<std::pair<double, std::string>> rows;
      for (const auto& [name, ms] : s.gpu_ms) rows.push_back({ms / n, "gpu  " + name});
      for (const auto& [name, ms] : s.host_ms) rows.push_back({ms / n, "host " + name});
      std::sort(rows.rbegin(), rows.rend());
      for (const auto& [ms, name] : rows) std::fprintf(stderr, "[vlm profile]   %9.1f us  %s\n", ms * 1e3, name.c_str());
    }
  }

  std::vector<cudaEvent_t> pool_;
  std::vector<const char*> phases_;
  size_t used_ = 0;
  std::string label_;
  int64_t begin_ = 0, last_end_ = 0;
  std::map<std::string, int64_t> host_;
  std::map<std::string, Stats> stats_;
};

}  // namespace cuda
}  // namespace vlm

// Free list of KV cache blocks. The scheduler is the only caller: a block is
// owned by exactly one request's block table, or it is free.
#pragma once
#include <cstdint>
#include <vector>

namespace vlm {

class BlockManager {
 public:
  explicit BlockManager(int64_t num_blocks);
  int64_t total() const { return total_; }
  int64_t num_free() const { return (int64_t)free_.size(); }
  // Appends `n` blocks to `table`; false (and nothing taken) if fewer are free.
  bool allocate(int64_t n, std::vector<int32_t>& table);
  // Returns every block of `table` and clears it.
  void release(std::vector<int32_t>& table);

 private:
  int64_t total_;
  std::vector<int32_t> free_;
};

}  // namespace vlm

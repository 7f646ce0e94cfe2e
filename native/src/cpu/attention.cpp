#include "cpu/attention.h"

#include <algorithm>
#include <cmath>

#include "common/numeric.h"

namespace vlm {
namespace {

constexpr int kTokenBlock = 32;  // new tokens per work item: bounds the redundant K/V dequantization

inline float dot(const float* a, const float* b, int n) {
  int i = 0;
  float s = 0.f;
  if (n % 16 == 0) {
    v16f acc = v16f{};
    for (; i < n; i += 16) acc += load16(a + i) * load16(b + i);
    return hsum16(acc);
  }
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float alpha, const float* x, float* y, int n) {
  int i = 0;
  if (n % 16 == 0) {
    const v16f a = splat16(alpha);
    for (; i < n; i += 16) store16(y + i, load16(y + i) + a * load16(x + i));
    return;
  }
  for (; i < n; ++i) y[i] += alpha * x[i];
}

struct WorkItem {
  int segment, kv_head, first, count;  // tokens [first, first+count) of the segment
};

}  // namespace

void paged_attention(const KvCache& cache, int layer, const AttentionShape& s,
                     const std::vector<AttentionSegment>& segments, const float* q, float* out) {
  const int hd = s.head_dim, group = s.num_heads / s.num_kv_heads, bs = cache.block_size();
  const int qstride = s.num_heads * hd;
  const float softmax_scale = 1.0f / std::sqrt(static_cast<float>(hd));

  std::vector<WorkItem> items;
  for (int si = 0; si < (int)segments.size(); ++si)
    for (int h = 0; h < s.num_kv_heads; ++h)
      for (int t = 0; t < segments[si].count; t += kTokenBlock)
        items.push_back({si, h, t, std::min(kTokenBlock, segments[si].count - t)});

#pragma omp parallel
  {
    std::vector<float> kbuf, vbuf, scores;
#pragma omp for schedule(dynamic)
    for (int it = 0; it < (int)items.size(); ++it) {
      const WorkItem& w = items[it];
      const AttentionSegment& seg = segments[w.segment];
      const int last_pos = seg.start + w.first + w.count - 1;
      const int lo_pos = s.sliding_window > 0 ? std::max(0, seg.start + w.first - s.sliding_window + 1) : 0;
      const int ctx = last_pos + 1 - lo_pos;
      kbuf.resize((size_t)ctx * hd);
      vbuf.resize((size_t)ctx * hd);
      scores.resize(ctx);
      for (int j = 0; j < ctx; ++j) {  // dequantize once, reuse for every query of the item
        const int pos = lo_pos + j;
        const int64_t block = seg.block_table[pos / bs];
        cache.read_k(layer, block, w.kv_head, pos % bs, &kbuf[(size_t)j * hd]);
        cache.read_v(layer, block, w.kv_head, pos % bs, &vbuf[(size_t)j * hd]);
      }
      for (int t = w.first; t < w.first + w.count; ++t) {
        const int pos = seg.start + t;
        const int row = seg.row + t;
        const int first = s.sliding_window > 0 ? std::max(0, pos - s.sliding_window + 1) - lo_pos : 0;
        const int n = pos - lo_pos + 1;
        for (int g = 0; g < group; ++g) {
          const int head = w.kv_head * group + g;
          const float* qh = q + (int64_t)row * qstride + head * hd;
          float mx = -INFINITY;
          for (int j = first; j < n; ++j) {
            scores[j] = dot(qh, &kbuf[(size_t)j * hd], hd) * softmax_scale;
            mx = std::max(mx, scores[j]);
          }
          float sum = 0.f;
          for (int j = first; j < n; ++j) {
            scores[j] = std::exp(scores[j] - mx);
            sum += scores[j];
          }
          float* o = out + (int64_t)row * qstride + head * hd;
          std::fill(o, o + hd, 0.f);
          const float inv = 1.0f / sum;
          for (int j = first; j < n; ++j) axpy(scores[j] * inv, &vbuf[(size_t)j * hd], o, hd);
        }
      }
    }
  }
}

}  // namespace vlm

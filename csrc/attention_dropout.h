#pragma once
// gat_aggregate's attention-dropout mask, shared by the CPU kernels, the CUDA kernels and
// their glue (fastalign/attention_dropout.py defines it): the entry (edge
// id e, head h) is kept when the 24 high bits of
//   fmix32(lo32(e H + h) ^ fmix32(hi32(e H + h) ^ seed))
// reach threshold(p) = ceil(p 2^24), and a kept entry is scaled by 1 / (1 - p).
// Plain C++ (host and device): no torch.
#include <stdint.h>

#include <cmath>

#if defined(__CUDACC__)
#define FASTALIGN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTALIGN_HOST_DEVICE inline
#endif

namespace fastalign {
namespace attention_dropout {

// MurmurHash3's 32-bit finaliser.
FASTALIGN_HOST_DEVICE uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}

// Whether entry (edge, head) of a layer with `heads` heads is kept.
FASTALIGN_HOST_DEVICE bool kept(uint64_t edge, uint64_t heads, uint64_t head, uint32_t seed, uint32_t threshold) {
  const uint64_t idx = edge * heads + head;
  return (fmix32(uint32_t(idx) ^ fmix32(uint32_t(idx >> 32) ^ seed)) >> 8) >= threshold;
}

// The 24-bit threshold of dropout probability p (0: keep everything).
inline uint32_t threshold(double p) { return uint32_t(std::fmin(std::ceil(p * 16777216.0), 16777216.0)); }

// The factor of a kept entry (0 when everything is dropped).
inline double scale(double p) { return p < 1.0 ? 1.0 / (1.0 - p) : 0.0; }

}  // namespace attention_dropout
}  // namespace fastalign

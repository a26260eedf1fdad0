// What hpr's XLA FFI kernels share: 16-float vectors, multi-versioned hot
// loops, and a parallel loop over XLA's intra-op thread pool.

#ifndef HPR_NATIVE_FFI_UTIL_H_
#define HPR_NATIVE_FFI_UTIL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace hpr {

namespace ffi = xla::ffi;

// On x86-64 Linux the hot loops are compiled for AVX-512, AVX2 and the
// baseline, and the loader picks the best the CPU has (GNU ifuncs).
#if defined(__x86_64__) && defined(__linux__)
#define HPR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HPR_CLONES
#endif

// 16 floats: GCC lowers its arithmetic to the widest vectors of each
// target_clones target (one AVX-512 register, two AVX2 ones, ...).
typedef float V16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));
constexpr int kLanes = 16;

inline V16 Load(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void Store(float* p, V16 v) { std::memcpy(p, &v, sizeof(v)); }

// Runs fn(block) for block = 0 .. blocks - 1 on the calling thread and on
// XLA's intra-op thread pool, and returns when all are done. The caller
// takes blocks too, so the work finishes even if no pool thread comes.
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t blocks, Fn fn) {
  struct State {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  auto work = [state, blocks, fn]() {
    int64_t finished = 0;
    for (int64_t b; (b = state->next.fetch_add(1)) < blocks; ++finished) fn(b);
    std::lock_guard<std::mutex> lock(state->mu);
    state->done += finished;
    state->cv.notify_all();
  };
  const int64_t helpers =
      std::min<int64_t>(pool.num_threads(), blocks) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == blocks; });
}

}  // namespace hpr

#endif  // HPR_NATIVE_FFI_UTIL_H_

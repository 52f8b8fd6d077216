// A minimal parallel-for on std::thread. The engine avoids OpenMP on purpose: torch ships its
// own libgomp, and two OpenMP runtimes in one process fight over threads (or crash at exit).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <system_error>
#include <thread>
#include <vector>

namespace affaccel {

// Resolve a requested thread count: 0 means every hardware thread; never more than `items`.
inline int resolve_threads(int64_t requested, int64_t items) {
  int64_t n = requested;
  if (n <= 0) n = static_cast<int64_t>(std::thread::hardware_concurrency());
  n = std::max<int64_t>(1, std::min<int64_t>(n, std::max<int64_t>(items, 1)));
  return static_cast<int>(std::min<int64_t>(n, 1024));
}

// Call fn(i) for every i in [0, n_items) on up to n_threads threads (the caller's included).
// Items are claimed one by one from an atomic counter, so uneven items still balance.
// fn must not throw: callers validate every index before entering the parallel region.
template <class F>
void parallel_for(int64_t n_items, int n_threads, F&& fn) {
  if (n_items <= 0) return;
  if (n_threads <= 1 || n_items == 1) {
    for (int64_t i = 0; i < n_items; ++i) fn(i);
    return;
  }
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_items) return;
      fn(i);
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(n_threads - 1));
  for (int t = 1; t < n_threads; ++t) {
    try {
      pool.emplace_back(worker);
    } catch (const std::system_error&) {
      break;  // out of threads: the ones already started (and this one) finish the work
    }
  }
  worker();
  for (auto& th : pool) th.join();
}

}  // namespace affaccel

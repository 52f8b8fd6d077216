// A persistent parallel-for on std::thread. The engine avoids OpenMP on purpose: torch ships its
// own libgomp, and two OpenMP runtimes in one process fight over threads (or crash at exit).
//
// Starting threads per call cost 50-150 us (more on a loaded machine), so the workers are
// started once, on the first call that asks for them, and then sleep on a condition variable.
// A call uses them only when it has enough work (parallel_min_bytes() per thread, see
// threads_for): waking a sleeping worker still costs 5-50 us.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(_WIN32)
#include <process.h>
#define AFFACCEL_GETPID _getpid
#else
#include <unistd.h>
#define AFFACCEL_GETPID getpid
#endif

namespace affaccel {

// Bytes of work each thread must have before a call uses more than one (set_parallel_min_bytes
// changes it; measured default in segments.cpp).
int64_t parallel_min_bytes();
void set_parallel_min_bytes(int64_t n);

// Threads for a call with `work_bytes` of work over `items` independent items: 1 below the
// threshold, else up to `requested` (0 = every hardware thread), one per parallel_min_bytes().
// std::thread::hardware_concurrency() reads /sys on Linux (~20 us): asked once per process.
inline int64_t hardware_threads() {
  static const int64_t n = std::max<int64_t>(1, std::thread::hardware_concurrency());
  return n;
}

inline int threads_for(int64_t requested, int64_t work_bytes, int64_t items) {
  int64_t n = requested;
  if (n <= 0) n = hardware_threads();
  const int64_t per = std::max<int64_t>(parallel_min_bytes(), 1);
  n = std::min<int64_t>(n, work_bytes / per);
  n = std::min<int64_t>(n, items);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n, 256)));
}

class ThreadPool {
 public:
  // The process's pool. A child after fork() gets a fresh one (the parent's workers do not
  // exist there); the old object is left alone, never freed, like the pool itself.
  static ThreadPool& instance() {
    static std::atomic<ThreadPool*> pool{nullptr};
    static std::atomic<long> owner{0};
    const long me = static_cast<long>(AFFACCEL_GETPID());
    ThreadPool* cur = pool.load(std::memory_order_acquire);
    if (cur != nullptr && owner.load(std::memory_order_acquire) == me) return *cur;
    auto* fresh = new ThreadPool();  // cheap: its workers start on first use
    if (pool.compare_exchange_strong(cur, fresh)) {
      owner.store(me, std::memory_order_release);
      return *fresh;
    }
    delete fresh;
    return *pool.load(std::memory_order_acquire);
  }

  // fn(i) for every i in [0, n_items) on up to n_threads threads (the caller's included).
  // Items are claimed one by one from an atomic counter, so uneven items still balance.
  // fn must not throw: callers validate every index before the parallel region. If another
  // thread is using the pool, this call runs on its own thread alone (no waiting, no deadlock).
  template <class F>
  void run(int64_t n_items, int n_threads, F&& fn) {
    if (n_items <= 0) return;
    if (n_threads <= 1 || n_items == 1) {
      for (int64_t i = 0; i < n_items; ++i) fn(i);
      return;
    }
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (!busy.owns_lock()) {
      for (int64_t i = 0; i < n_items; ++i) fn(i);
      return;
    }
    const int helpers = grow(std::min<int64_t>(n_threads - 1, n_items - 1));
    if (helpers == 0) {
      for (int64_t i = 0; i < n_items; ++i) fn(i);
      return;
    }
    using Fn = std::remove_reference_t<F>;
    {
      std::lock_guard<std::mutex> lk(m_);
      call_ = [](void* ctx, int64_t i) { (*static_cast<Fn*>(ctx))(i); };
      ctx_ = static_cast<void*>(&fn);
      n_items_ = n_items;
      next_.store(0, std::memory_order_relaxed);
      active_ = helpers;
      pending_ = helpers;
      ++generation_;
    }
    dispatches_.fetch_add(1, std::memory_order_relaxed);
    cv_work_.notify_all();
    drain();
    std::unique_lock<std::mutex> lk(m_);
    cv_done_.wait(lk, [&] { return pending_ == 0; });
  }

  int64_t dispatches() const { return dispatches_.load(std::memory_order_relaxed); }
  int workers() {
    std::lock_guard<std::mutex> lk(m_);
    return static_cast<int>(workers_);
  }

 private:
  ThreadPool() = default;

  // Start workers until there are `want` of them (or the system refuses); returns how many.
  int grow(int64_t want) {
    std::lock_guard<std::mutex> lk(m_);
    while (workers_ < want) {
      try {
        std::thread(&ThreadPool::worker, this, static_cast<int>(workers_), generation_).detach();
      } catch (const std::system_error&) {
        break;  // out of threads: the ones already there (and the caller) do the work
      }
      ++workers_;
    }
    return static_cast<int>(std::min<int64_t>(workers_, want));
  }

  void drain() {
    for (;;) {
      const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_items_) return;
      call_(ctx_, i);
    }
  }

  void worker(int id, uint64_t seen) {
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      cv_work_.wait(lk, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= active_) continue;  // this call needs fewer helpers
      lk.unlock();
      drain();
      lk.lock();
      if (--pending_ == 0) cv_done_.notify_one();
    }
  }

  std::mutex run_mutex_;  // one parallel call at a time
  std::mutex m_;
  std::condition_variable cv_work_, cv_done_;
  uint64_t generation_ = 0;
  int64_t workers_ = 0;
  int active_ = 0, pending_ = 0;
  void (*call_)(void*, int64_t) = nullptr;
  void* ctx_ = nullptr;
  int64_t n_items_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> dispatches_{0};
};

}  // namespace affaccel

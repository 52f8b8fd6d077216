// The window engine: cut per-frame feature sequences into overlapping windows (assembly) and
// average per-window predictions back to frames (overlap averaging).
//
// Every entry point checks every shape, dtype and index before it touches memory, so a bad
// call raises ValueError instead of crashing the process; affaccel/segments.py leans on that
// and calls the `*_fast` style entry points (assemble_windows, assemble_windows_batch,
// gather_windows without out=, average) straight from its public functions, running its own
// (slower, better-worded) checks only after the engine refused a call. The heavy loops run
// with the GIL released, on the persistent pool of parallel.h above a measured work size.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "bindings.h"
#include "half.h"
#include "parallel.h"

namespace py = pybind11;

namespace affaccel {

// Work per thread below which a call stays on one thread. Measured on the shared 2-core
// development machine with bench/bench_segments.py --threshold (docs/segments.md): there a
// second thread never paid for averaging up to 200k frames (24 MB of work) and gained 0-12%
// for assembly from ~100 MB on, so the pool starts at 32 MB per thread. A quiet many-core
// machine can lower it (affaccel.segments.set_parallel_threshold).
namespace {
std::atomic<int64_t> g_parallel_min_bytes{int64_t{32} << 20};
}  // namespace

int64_t parallel_min_bytes() { return g_parallel_min_bytes.load(std::memory_order_relaxed); }
void set_parallel_min_bytes(int64_t n) {
  g_parallel_min_bytes.store(std::max<int64_t>(n, 0), std::memory_order_relaxed);
}

namespace {

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

bool little_endian() {
  const uint16_t one = 1;
  uint8_t first;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

bool native_order(const py::dtype& dt) {
  const char bo = dt.byteorder();
  return bo == '=' || bo == '|' || (bo == '<') == little_endian();
}

void require_c_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style)) fail(std::string(name) + " must be C-contiguous");
}

void require_writeable(const py::array& a, const char* name) {
  if (!a.writeable()) fail(std::string(name) + " must be writeable");
}

bool is_int64(const py::array& a) {
  const py::dtype dt = a.dtype();
  return dt.kind() == 'i' && dt.itemsize() == 8 && native_order(dt);
}

void require_int64(const py::array& a, const char* name) {
  if (!is_int64(a)) fail(std::string(name) + " must have dtype int64");
  require_c_contiguous(a, name);
}

std::string strip_lower(const char* v) {
  std::string s(v);
  const auto sp = [](unsigned char c) { return std::isspace(c) != 0; };
  while (!s.empty() && sp(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && sp(static_cast<unsigned char>(s[i]))) ++i;
  s.erase(0, i);
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The rules of affaccel/env.py, read through getenv (os.environ writes reach it via putenv):
// ~50 ns here against 2-3 us for a read through os.environ, which would be a third of the
// budget of a whole call. affaccel.env stays the list of variables and their meaning.
bool env_flag(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (v == nullptr) return false;
  const std::string s = strip_lower(v);
  return s == "1" || s == "true" || s == "yes" || s == "on";
}

int64_t env_threads() {
  const char* v = std::getenv("AFFACCEL_NUM_THREADS");
  if (v == nullptr) return 0;
  const std::string s = strip_lower(v);
  size_t i = (!s.empty() && s[0] == '+') ? 1 : 0;
  int64_t n = 0;
  bool digits = false;
  for (; i < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') { digits = false; break; }
    n = std::min<int64_t>(n * 10 + (s[i] - '0'), int64_t{1} << 40);
    digits = true;
  }
  if (!digits) fail("AFFACCEL_NUM_THREADS must be an integer >= 0, got '" + std::string(v) + "'");
  return n;
}

// num_threads < 0: AFFACCEL_NUM_THREADS (0 = every hardware thread).
int64_t requested_threads(int64_t num_threads) { return num_threads < 0 ? env_threads() : num_threads; }

int64_t as_int(py::handle h, const char* name) {
  if (PyBool_Check(h.ptr())) fail(std::string(name) + " must be an integer");
  PyObject* idx = PyNumber_Index(h.ptr());
  if (idx == nullptr) {
    PyErr_Clear();
    fail(std::string(name) + " must be an integer");
  }
  const long long v = PyLong_AsLongLong(idx);
  Py_DECREF(idx);
  if (v == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    fail(std::string(name) + " is out of range");
  }
  return static_cast<int64_t>(v);
}

void check_window_stride(int64_t window, int64_t stride) {
  if (window <= 0) fail("window must be > 0, got " + std::to_string(window));
  if (stride <= 0) fail("stride must be > 0, got " + std::to_string(stride));
  if (stride > window) fail("stride must be <= window (frames would be skipped)");
}

// Window starts of one video by the DESIGN.md rule (as plan_windows_ref): 0, s, 2s, ... while
// a whole window fits, plus one window ending at the last frame if the last does not reach it.
void plan_into(std::vector<int64_t>& starts, int64_t n, int64_t w, int64_t s) {
  if (n <= w) {
    starts.push_back(0);
    return;
  }
  int64_t a = 0;
  for (; a + w <= n; a += s) starts.push_back(a);
  if (starts.back() + w < n) starts.push_back(n - w);
}

// One input matrix [rows, cols] seen through byte strides (any layout, negative strides too).
struct Source {
  const char* data;
  int64_t rows;
  int64_t row_stride;
  int64_t col_stride;
};

// Copy `n` elements of `itemsize` bytes from a strided row into a contiguous one.
template <class Word>
void copy_strided_row(char* dst, const char* src, int64_t n, int64_t stride) {
  for (int64_t c = 0; c < n; ++c) {
    Word w;
    std::memcpy(&w, src + c * stride, sizeof(Word));
    std::memcpy(dst + c * static_cast<int64_t>(sizeof(Word)), &w, sizeof(Word));
  }
}

void copy_row(char* dst, const char* src, int64_t cols, int64_t col_stride, int64_t itemsize) {
  if (col_stride == itemsize) {
    std::memcpy(dst, src, static_cast<size_t>(cols * itemsize));
    return;
  }
  switch (itemsize) {
    case 1: copy_strided_row<uint8_t>(dst, src, cols, col_stride); return;
    case 2: copy_strided_row<uint16_t>(dst, src, cols, col_stride); return;
    case 4: copy_strided_row<uint32_t>(dst, src, cols, col_stride); return;
    case 8: copy_strided_row<uint64_t>(dst, src, cols, col_stride); return;
    default:
      for (int64_t c = 0; c < cols; ++c)
        std::memcpy(dst + c * itemsize, src + c * col_stride, static_cast<size_t>(itemsize));
  }
}

// Caller-provided outputs (gather_windows with out=) larger than this are written with
// non-temporal stores: they cannot stay in cache anyway, and streaming skips the
// read-for-ownership of every destination line (what glibc's memcpy does for large copies too).
// Outputs allocated here are not: their pages are new, the kernel has just zeroed them into
// cache on the first touch, and plain stores measured 5-25% faster there (30k-100k frames).
constexpr int64_t kStreamMinBytes = int64_t{32} << 20;

// memcpy with non-temporal stores where SSE2 is there (every x86-64); plain memcpy elsewhere.
void stream_copy(char* dst, const char* src, int64_t n) {
#if defined(__SSE2__)
  const int64_t head = std::min<int64_t>(n, (16 - (reinterpret_cast<uintptr_t>(dst) & 15)) & 15);
  std::memcpy(dst, src, static_cast<size_t>(head));
  dst += head;
  src += head;
  n -= head;
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  std::memcpy(dst + i, src + i, static_cast<size_t>(n - i));
#else
  std::memcpy(dst, src, static_cast<size_t>(n));
#endif
}

void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();  // order the non-temporal stores before the caller reads the output
#endif
}

// ------------------------------------------------------------------------------- assembly

// windows[b] = source[video_b][start_b : start_b + window], zero-padded; mask[b] marks the
// copied frames. Bytewise copy: any dtype, float16 and bfloat16 (as raw 16-bit words) never
// converted. The index must be validated already; the GIL must be released by the caller.
void fill_windows(const std::vector<Source>& src, const int64_t* idx, int64_t n_windows,
                  int64_t window, int64_t cols, int64_t itemsize, char* out_ptr,
                  uint8_t* mask_ptr, int64_t num_threads, bool fresh_output) {
  const int64_t row_bytes = cols * itemsize;
  const int64_t window_bytes = window * row_bytes;
  const int64_t total = n_windows * window_bytes;
  const bool stream = !fresh_output && total >= kStreamMinBytes;
  const int threads = threads_for(num_threads, total, n_windows);
  ThreadPool::instance().run(n_windows, threads, [&](int64_t b) {
    const int64_t v = idx[2 * b], start = idx[2 * b + 1];
    const Source& s = src[static_cast<size_t>(v)];
    const int64_t n = std::min(window, s.rows - start);
    char* dst = out_ptr + b * window_bytes;
    const char* from = s.data + start * s.row_stride;
    if (s.col_stride == itemsize && s.row_stride == row_bytes) {  // rows back to back
      if (stream) stream_copy(dst, from, n * row_bytes);
      else std::memcpy(dst, from, static_cast<size_t>(n * row_bytes));
    } else {
      for (int64_t r = 0; r < n; ++r)
        copy_row(dst + r * row_bytes, from + r * s.row_stride, cols, s.col_stride, itemsize);
    }
    std::memset(dst + n * row_bytes, 0, static_cast<size_t>((window - n) * row_bytes));
    uint8_t* m = mask_ptr + b * window;
    std::memset(m, 1, static_cast<size_t>(n));
    std::memset(m + n, 0, static_cast<size_t>(window - n));
    if (stream) stream_fence();
  });
}

// The sources of a features list, checked: 2-D, at least one frame, one D and one dtype.
// `keep` holds references, since another Python thread may mutate the list while the GIL is off.
py::dtype read_sources(const py::sequence& features, std::vector<py::array>& keep,
                       std::vector<Source>& src, int64_t& cols) {
  const int64_t n_videos = static_cast<int64_t>(features.size());
  if (n_videos == 0) fail("features must hold at least one video");
  keep.reserve(static_cast<size_t>(n_videos));
  src.reserve(static_cast<size_t>(n_videos));
  py::dtype dt0;
  for (int64_t v = 0; v < n_videos; ++v) {
    py::object h = features[static_cast<size_t>(v)];
    if (!py::isinstance<py::array>(h)) fail("features[" + std::to_string(v) + "] is not an array");
    py::array a = py::reinterpret_borrow<py::array>(h);
    const std::string where = "features[" + std::to_string(v) + "]";
    if (a.ndim() != 2) fail(where + " must be 2-D [T, D]");
    const py::dtype dt = a.dtype();
    if (v == 0) {
      dt0 = dt;
      cols = a.shape(1);
      if (std::strchr("fiubc", dt.kind()) == nullptr) fail(where + " must hold numbers");
    } else {
      if (a.shape(1) != cols)
        fail(where + " has D=" + std::to_string(a.shape(1)) + ", expected " + std::to_string(cols));
      if (dt.kind() != dt0.kind() || dt.itemsize() != dt0.itemsize() ||
          native_order(dt) != native_order(dt0))
        fail(where + " has a different dtype than features[0]");
    }
    if (a.shape(0) <= 0) fail(where + " has no frames");
    src.push_back({static_cast<const char*>(a.data()), a.shape(0), a.strides(0), a.strides(1)});
    keep.push_back(std::move(a));
  }
  return dt0;
}

// Allocate windows [N, w, D] (dtype of the features) and mask [N, w], fill them.
py::tuple assemble_index(const std::vector<Source>& src, const py::dtype& dt, int64_t cols,
                         const int64_t* idx, int64_t n_windows, int64_t window,
                         int64_t num_threads) {
  const int64_t threads = requested_threads(num_threads);
  py::array out(dt, std::vector<py::ssize_t>{n_windows, window, cols});
  py::array_t<bool> mask(std::vector<py::ssize_t>{n_windows, window});
  char* out_ptr = static_cast<char*>(out.mutable_data());
  auto* mask_ptr = reinterpret_cast<uint8_t*>(mask.mutable_data());
  const int64_t itemsize = dt.itemsize();
  {
    py::gil_scoped_release nogil;
    fill_windows(src, idx, n_windows, window, cols, itemsize, out_ptr, mask_ptr, threads, true);
  }
  return py::make_tuple(std::move(out), std::move(mask));
}

void check_index(const int64_t* idx, int64_t n_windows, const std::vector<Source>& src) {
  const int64_t n_videos = static_cast<int64_t>(src.size());
  for (int64_t b = 0; b < n_windows; ++b) {
    const int64_t v = idx[2 * b], s = idx[2 * b + 1];
    if (v < 0 || v >= n_videos)
      fail("index[" + std::to_string(b) + "]: video " + std::to_string(v) + " out of range [0, " +
           std::to_string(n_videos) + ")");
    if (s < 0 || s >= src[static_cast<size_t>(v)].rows)
      fail("index[" + std::to_string(b) + "]: start " + std::to_string(s) +
           " out of range [0, " + std::to_string(src[static_cast<size_t>(v)].rows) + ")");
  }
}

// gather_windows(features, index, window, out=None, mask=None, num_threads=-1): with out and
// mask given, fills them (any dtype, same as the features) and returns None; without, allocates
// and returns (windows, mask).
py::object gather_windows(const py::sequence& features, const py::array& index, int64_t window,
                          py::object out_obj, py::object mask_obj, int64_t num_threads) {
  if (window <= 0) fail("window must be > 0, got " + std::to_string(window));
  std::vector<py::array> keep;
  std::vector<Source> src;
  int64_t cols = 0;
  const py::dtype dt = read_sources(features, keep, src, cols);
  require_int64(index, "index");
  if (index.ndim() != 2 || index.shape(1) != 2) fail("index must have shape [B, 2]");
  const int64_t n_windows = index.shape(0);
  const auto* idx = static_cast<const int64_t*>(index.data());
  check_index(idx, n_windows, src);
  if (out_obj.is_none() && mask_obj.is_none())
    return assemble_index(src, dt, cols, idx, n_windows, window, num_threads);
  if (out_obj.is_none() || mask_obj.is_none()) fail("pass both out and mask, or neither");
  if (!py::isinstance<py::array>(out_obj) || !py::isinstance<py::array>(mask_obj))
    fail("out and mask must be arrays");
  py::array out = py::reinterpret_borrow<py::array>(out_obj);
  py::array mask = py::reinterpret_borrow<py::array>(mask_obj);
  if (out.ndim() != 3) fail("out must be 3-D [B, window, D]");
  require_c_contiguous(out, "out");
  require_writeable(out, "out");
  if (out.shape(0) != n_windows) fail("index must have shape [B, 2] with B = out.shape[0]");
  if (out.shape(1) != window) fail("out.shape[1] must equal window");
  if (out.shape(2) != cols) fail("out has D=" + std::to_string(out.shape(2)) + ", features " +
                                 std::to_string(cols));
  if (out.dtype().kind() != dt.kind() || out.itemsize() != dt.itemsize())
    fail("features have a different dtype than out");
  if (mask.ndim() != 2 || mask.shape(0) != n_windows || mask.shape(1) != window)
    fail("mask must have shape [B, window]");
  if (mask.dtype().kind() != 'b' || mask.itemsize() != 1) fail("mask must have dtype bool");
  require_c_contiguous(mask, "mask");
  require_writeable(mask, "mask");
  char* out_ptr = static_cast<char*>(out.mutable_data());
  auto* mask_ptr = static_cast<uint8_t*>(mask.mutable_data());
  const int64_t threads = requested_threads(num_threads);
  {
    py::gil_scoped_release nogil;
    fill_windows(src, idx, n_windows, window, cols, dt.itemsize(), out_ptr, mask_ptr, threads,
                 false);
  }
  return py::none();
}

// assemble_windows(features [T, D], window, stride) -> (windows, mask): plan + allocate + fill.
py::tuple assemble_windows(const py::array& features, int64_t window, int64_t stride,
                           int64_t num_threads) {
  check_window_stride(window, stride);
  std::vector<py::array> keep;
  std::vector<Source> src;
  int64_t cols = 0;
  const py::dtype dt = read_sources(py::make_tuple(features), keep, src, cols);
  std::vector<int64_t> starts;
  plan_into(starts, src[0].rows, window, stride);
  std::vector<int64_t> idx(2 * starts.size());
  for (size_t b = 0; b < starts.size(); ++b) idx[2 * b + 1] = starts[b];
  return assemble_index(src, dt, cols, idx.data(), static_cast<int64_t>(starts.size()), window,
                        num_threads);
}

// assemble_windows_batch(list of [T_i, D], window, stride) -> (windows, mask, index [N, 2]).
py::tuple assemble_windows_batch(const py::sequence& features, int64_t window, int64_t stride,
                                 int64_t num_threads) {
  check_window_stride(window, stride);
  std::vector<py::array> keep;
  std::vector<Source> src;
  int64_t cols = 0;
  const py::dtype dt = read_sources(features, keep, src, cols);
  std::vector<int64_t> starts;
  std::vector<int64_t> video;
  for (size_t v = 0; v < src.size(); ++v) {
    plan_into(starts, src[v].rows, window, stride);
    video.resize(starts.size(), static_cast<int64_t>(v));
  }
  const auto n_windows = static_cast<int64_t>(starts.size());
  py::array_t<int64_t> index(std::vector<py::ssize_t>{n_windows, 2});
  int64_t* idx = index.mutable_data();
  for (int64_t b = 0; b < n_windows; ++b) {
    idx[2 * b] = video[static_cast<size_t>(b)];
    idx[2 * b + 1] = starts[static_cast<size_t>(b)];
  }
  py::tuple wm = assemble_index(src, dt, cols, idx, n_windows, window, num_threads);
  return py::make_tuple(wm[0], wm[1], std::move(index));
}

// ------------------------------------------------------------------------------ averaging
//
// Frame t of video v is sum_i w[t - s_i] * preds[i, t - s_i] / sum_i w[t - s_i] over the windows
// i of v that cover t, summed in float64 from 0.0 in window-index order and divided once,
// exactly the operations of overlap_average_batch_ref, so the result is the same bits (window
// order only matters from three overlapping windows on: a + b == b + a).
//
// Frames are swept in segments between window starts and ends: inside one segment the set of
// covering windows is fixed, and each output element is computed once from its m sources
// (m = 1 or 2 for w=300, s=200), with no accumulator array to clear and re-read.

enum class Kind { kFloat32, kFloat16, kBFloat16 };

template <Kind K>
inline float load(const char* p) {
  if constexpr (K == Kind::kFloat32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  } else {
    uint16_t h;
    std::memcpy(&h, p, 2);
    if constexpr (K == Kind::kFloat16) return half_to_float(h);
    else return bf16_to_float(h);
  }
}

constexpr int64_t kBlock = 512;  // elements per pass: acc and wsum stay in L1

// Division by m == multiplication by 1/m when m is a power of two (both round the same exact
// quotient), and x / 1 == x: the common uniform cases need no division (vdivpd is the
// bottleneck otherwise, 4-5 cycles per 4 doubles).
inline bool power_of_two(int64_t m) { return m > 0 && (m & (m - 1)) == 0; }

// out[e] = (0 + sum_j wp[j][e] * x_j[e]) / (0 + sum_j wp[j][e]) for e < len; x_j[e] at
// src[j] + e * step bytes. Uniform: every weight 1 (x * 1.0 == x, and the weight sum is m).
template <Kind K, bool Uniform>
void combine(float* out, const char* const* src, const double* const* wp, int64_t m, int64_t len,
             int64_t step) {
  double acc[kBlock], ws[kBlock];
  for (int64_t e0 = 0; e0 < len; e0 += kBlock) {
    const int64_t n = std::min(kBlock, len - e0);
    for (int64_t e = 0; e < n; ++e) acc[e] = 0.0;
    if (!Uniform)
      for (int64_t e = 0; e < n; ++e) ws[e] = 0.0;
    for (int64_t j = 0; j < m; ++j) {
      const char* s = src[j] + e0 * step;
      if (Uniform) {
        for (int64_t e = 0; e < n; ++e) acc[e] += static_cast<double>(load<K>(s + e * step));
      } else {
        const double* w = wp[j] + e0;
        for (int64_t e = 0; e < n; ++e) {
          acc[e] += w[e] * static_cast<double>(load<K>(s + e * step));
          ws[e] += w[e];
        }
      }
    }
    if (Uniform) {
      double md = 0.0;
      for (int64_t j = 0; j < m; ++j) md += 1.0;
      if (power_of_two(m))
        for (int64_t e = 0; e < n; ++e) out[e0 + e] = static_cast<float>(acc[e] * (1.0 / md));
      else
        for (int64_t e = 0; e < n; ++e) out[e0 + e] = static_cast<float>(acc[e] / md);
    } else {
      for (int64_t e = 0; e < n; ++e) out[e0 + e] = static_cast<float>(acc[e] / ws[e]);
    }
  }
}

// float32 with contiguous rows, the usual case, gets an AVX2 clone picked at load time: the
// wheel stays baseline x86-64 (no -march=native) but uses 4-wide doubles where the CPU has
// them. -ffp-contract=off (CMakeLists.txt) keeps the compiler from fusing the multiply-adds.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define AFFACCEL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define AFFACCEL_CLONES
#endif

AFFACCEL_CLONES
void combine_f32_uniform(float* out, const float* const* src, int64_t m, int64_t len) {
  if (m == 1) {
    const float* a = src[0];
    for (int64_t e = 0; e < len; ++e) out[e] = static_cast<float>(0.0 + static_cast<double>(a[e]));
    return;
  }
  if (m == 2) {
    const float* a = src[0];
    const float* b = src[1];
    for (int64_t e = 0; e < len; ++e)
      out[e] = static_cast<float>(
          ((0.0 + static_cast<double>(a[e])) + static_cast<double>(b[e])) * 0.5);
    return;
  }
  double md = 0.0;
  for (int64_t j = 0; j < m; ++j) md += 1.0;
  const bool pow2 = power_of_two(m);
  const double inv = 1.0 / md;
  double acc[kBlock];
  for (int64_t e0 = 0; e0 < len; e0 += kBlock) {
    const int64_t n = std::min(kBlock, len - e0);
    for (int64_t e = 0; e < n; ++e) acc[e] = 0.0;
    for (int64_t j = 0; j < m; ++j) {
      const float* s = src[j] + e0;
      for (int64_t e = 0; e < n; ++e) acc[e] += static_cast<double>(s[e]);
    }
    if (pow2)
      for (int64_t e = 0; e < n; ++e) out[e0 + e] = static_cast<float>(acc[e] * inv);
    else
      for (int64_t e = 0; e < n; ++e) out[e0 + e] = static_cast<float>(acc[e] / md);
  }
}

AFFACCEL_CLONES
void combine_f32_weighted(float* out, const float* const* src, const double* const* wp,
                          int64_t m, int64_t len) {
  double acc[kBlock], ws[kBlock];
  for (int64_t e0 = 0; e0 < len; e0 += kBlock) {
    const int64_t n = std::min(kBlock, len - e0);
    for (int64_t e = 0; e < n; ++e) acc[e] = 0.0;
    for (int64_t e = 0; e < n; ++e) ws[e] = 0.0;
    for (int64_t j = 0; j < m; ++j) {
      const float* s = src[j] + e0;
      const double* w = wp[j] + e0;
      for (int64_t e = 0; e < n; ++e) {
        acc[e] += w[e] * static_cast<double>(s[e]);
        ws[e] += w[e];
      }
    }
    for (int64_t e = 0; e < n; ++e) out[e0 + e] = static_cast<float>(acc[e] / ws[e]);
  }
}

struct Preds {
  const char* data;
  int64_t s0, s1, s2;  // byte strides of [N, w, K]
};

// Everything one averaging call needs, checked and planned with the GIL held.
struct AvgJob {
  Preds p{};
  Kind kind = Kind::kFloat32;
  int64_t n_windows = 0, window = 0, n_out = 0, item = 4;
  bool contiguous = false;  // K values adjacent and positions back to back, aligned
  std::vector<int64_t> st, nf, offset;
  std::vector<int64_t> first, order, sorted_start;  // per video: windows by (start, index)
  std::vector<char> in_order;  // per video: start order == index order
  std::vector<double> wexp;  // [w * K]: weights[j] at j * K + k; empty when uniform
  float* out = nullptr;
};

// One segment [t0, t1) of video v, covered by the windows order[lo:hi] (sorted by start).
template <Kind K>
void average_segment(const AvgJob& job, int64_t v, int64_t t0, int64_t t1, int64_t lo,
                     int64_t hi, std::vector<int64_t>& ids, std::vector<const char*>& src,
                     std::vector<const double*>& wp) {
  const int64_t m = hi - lo, n_out = job.n_out;
  const int64_t* ord = job.order.data() + job.first[static_cast<size_t>(v)];
  ids.assign(ord + lo, ord + hi);
  if (m >= 3 && !job.in_order[static_cast<size_t>(v)]) std::sort(ids.begin(), ids.end());
  const bool uniform = job.wexp.empty();
  for (int64_t j = 0; j < m; ++j) {
    const int64_t i = ids[static_cast<size_t>(j)], pos = t0 - job.st[static_cast<size_t>(i)];
    src[static_cast<size_t>(j)] = job.p.data + i * job.p.s0 + pos * job.p.s1;
    if (!uniform) wp[static_cast<size_t>(j)] = job.wexp.data() + pos * n_out;
  }
  float* out = job.out + (job.offset[static_cast<size_t>(v)] + t0) * n_out;
  if (job.contiguous) {
    const int64_t len = (t1 - t0) * n_out;
    if constexpr (K == Kind::kFloat32) {
      const auto* f = reinterpret_cast<const float* const*>(src.data());
      if (uniform) combine_f32_uniform(out, f, m, len);
      else combine_f32_weighted(out, f, wp.data(), m, len);
    } else {
      if (uniform) combine<K, true>(out, src.data(), wp.data(), m, len, job.item);
      else combine<K, false>(out, src.data(), wp.data(), m, len, job.item);
    }
    return;
  }
  for (int64_t t = t0; t < t1; ++t, out += n_out) {  // any strides: one frame at a time
    if (uniform) combine<K, true>(out, src.data(), wp.data(), m, n_out, job.p.s2);
    else combine<K, false>(out, src.data(), wp.data(), m, n_out, job.p.s2);
    for (int64_t j = 0; j < m; ++j) {
      src[static_cast<size_t>(j)] += job.p.s1;
      if (!uniform) wp[static_cast<size_t>(j)] += n_out;
    }
  }
}

// Frames [a, b) of video v. Returns the first frame no window covers (left NaN), or -1.
template <Kind K>
int64_t average_range(const AvgJob& job, int64_t v, int64_t a, int64_t b) {
  const size_t vs = static_cast<size_t>(v);
  const int64_t* ss = job.sorted_start.data() + job.first[vs];
  const int64_t cnt = job.first[vs + 1] - job.first[vs], w = job.window;
  int64_t hi = std::upper_bound(ss, ss + cnt, a) - ss;      // windows starting at or before a
  int64_t lo = std::upper_bound(ss, ss + cnt, a - w) - ss;  // ... and ending at or before a
  std::vector<int64_t> ids;
  std::vector<const char*> src(static_cast<size_t>(std::max<int64_t>(cnt, 1)));
  std::vector<const double*> wp(src.size());
  int64_t uncovered = -1;
  for (int64_t t = a; t < b;) {
    int64_t t1 = b;
    if (hi < cnt) t1 = std::min(t1, ss[hi]);
    if (lo < hi) t1 = std::min(t1, ss[lo] + w);
    if (lo == hi) {
      float* o = job.out + (job.offset[vs] + t) * job.n_out;
      std::fill(o, o + (t1 - t) * job.n_out, std::numeric_limits<float>::quiet_NaN());
      if (uncovered < 0) uncovered = t;
    } else {
      average_segment<K>(job, v, t, t1, lo, hi, ids, src, wp);
    }
    t = t1;
    while (hi < cnt && ss[hi] <= t) ++hi;
    while (lo < hi && ss[lo] + w <= t) ++lo;
  }
  return uncovered;
}

// Check the index, group windows by video and sort each video's by start (stable).
void plan_average(AvgJob& job, const std::vector<int64_t>& vid) {
  const int64_t n_videos = static_cast<int64_t>(job.nf.size());
  job.first.assign(static_cast<size_t>(n_videos) + 1, 0);
  for (int64_t i = 0; i < job.n_windows; ++i) {
    const int64_t v = vid[static_cast<size_t>(i)], s = job.st[static_cast<size_t>(i)];
    if (v < 0 || v >= n_videos)
      fail("video[" + std::to_string(i) + "] = " + std::to_string(v) + " out of range [0, " +
           std::to_string(n_videos) + ")");
    if (s < 0 || s >= job.nf[static_cast<size_t>(v)])
      fail("starts[" + std::to_string(i) + "] = " + std::to_string(s) + " out of range [0, " +
           std::to_string(job.nf[static_cast<size_t>(v)]) + ")");
    ++job.first[static_cast<size_t>(v) + 1];
  }
  for (int64_t v = 0; v < n_videos; ++v) job.first[static_cast<size_t>(v) + 1] += job.first[static_cast<size_t>(v)];
  job.order.resize(static_cast<size_t>(job.n_windows));
  {
    std::vector<int64_t> fill(job.first.begin(), job.first.end() - 1);
    for (int64_t i = 0; i < job.n_windows; ++i)
      job.order[static_cast<size_t>(fill[static_cast<size_t>(vid[static_cast<size_t>(i)])]++)] = i;
  }
  job.in_order.assign(static_cast<size_t>(n_videos), 1);
  const auto by_start = [&](int64_t x, int64_t y) {
    return job.st[static_cast<size_t>(x)] < job.st[static_cast<size_t>(y)];
  };
  for (int64_t v = 0; v < n_videos; ++v) {
    auto b = job.order.begin() + job.first[static_cast<size_t>(v)];
    auto e = job.order.begin() + job.first[static_cast<size_t>(v) + 1];
    if (!std::is_sorted(b, e, by_start)) {
      std::stable_sort(b, e, by_start);
      job.in_order[static_cast<size_t>(v)] = 0;
    }
  }
  job.sorted_start.resize(job.order.size());
  for (size_t o = 0; o < job.order.size(); ++o)
    job.sorted_start[o] = job.st[static_cast<size_t>(job.order[o])];
}

// Runs the averaging (GIL released) into job.out; returns the first uncovered row, or -1.
int64_t run_average(const AvgJob& job, int64_t num_threads) {
  const int64_t n_videos = static_cast<int64_t>(job.nf.size());
  const int64_t total = job.offset.back();
  const int64_t work = job.n_windows * job.window * job.n_out * job.item + total * job.n_out * 4;
  int threads = threads_for(requested_threads(num_threads), work, total);
  // Work items: (video, frames [a, b)). One per video on one thread; chunks to share otherwise.
  std::vector<int64_t> item_v, item_a;
  const int64_t chunk = threads > 1 ? std::max<int64_t>(256, total / (8 * threads)) : total;
  for (int64_t v = 0; v < n_videos; ++v)
    for (int64_t a = 0; a < job.nf[static_cast<size_t>(v)]; a += chunk) {
      item_v.push_back(v);
      item_a.push_back(a);
    }
  std::atomic<int64_t> uncovered{std::numeric_limits<int64_t>::max()};
  py::gil_scoped_release nogil;
  ThreadPool::instance().run(static_cast<int64_t>(item_v.size()), threads, [&](int64_t it) {
    const int64_t v = item_v[static_cast<size_t>(it)], a = item_a[static_cast<size_t>(it)];
    const int64_t b = std::min(a + chunk, job.nf[static_cast<size_t>(v)]);
    int64_t u = -1;
    switch (job.kind) {
      case Kind::kFloat32: u = average_range<Kind::kFloat32>(job, v, a, b); break;
      case Kind::kFloat16: u = average_range<Kind::kFloat16>(job, v, a, b); break;
      case Kind::kBFloat16: u = average_range<Kind::kBFloat16>(job, v, a, b); break;
    }
    if (u >= 0) {
      const int64_t row = job.offset[static_cast<size_t>(v)] + u;
      int64_t cur = uncovered.load();
      while (row < cur && !uncovered.compare_exchange_weak(cur, row)) {
      }
    }
  });
  const int64_t r = uncovered.load();
  return r == std::numeric_limits<int64_t>::max() ? -1 : r;
}

// The predictions' kind and layout, and the weights, into job.
void setup_preds(AvgJob& job, const py::array& preds, bool bf16, const py::object& weights) {
  if (preds.ndim() != 3) fail("window_preds must be 3-D [N, window, K]");
  job.n_windows = preds.shape(0);
  job.window = preds.shape(1);
  job.n_out = preds.shape(2);
  const py::dtype dt = preds.dtype();
  if (bf16 && (dt.kind() == 'i' || dt.kind() == 'u') && dt.itemsize() == 2) job.kind = Kind::kBFloat16;
  else if (!bf16 && dt.kind() == 'f' && dt.itemsize() == 4) job.kind = Kind::kFloat32;
  else if (!bf16 && dt.kind() == 'f' && dt.itemsize() == 2) job.kind = Kind::kFloat16;
  else fail("window_preds must be float32, float16 or bfloat16 (raw 16-bit words)");
  if (!native_order(dt)) fail("window_preds must be in native byte order");
  if (job.window <= 0) fail("window_preds.shape[1] (the window) must be > 0");
  job.item = dt.itemsize();
  job.p = {static_cast<const char*>(preds.data()), preds.strides(0), preds.strides(1),
           preds.strides(2)};
  const bool aligned = reinterpret_cast<uintptr_t>(job.p.data) % static_cast<uintptr_t>(job.item) == 0 &&
                       job.p.s0 % job.item == 0;
  job.contiguous = job.p.s2 == job.item && job.p.s1 == job.n_out * job.item && aligned;
  if (weights.is_none()) return;
  if (!py::isinstance<py::array>(weights)) fail("weights must be an array");
  const py::array wa = py::reinterpret_borrow<py::array>(weights);
  if (wa.ndim() != 1 || wa.shape(0) != job.window) fail("weights must have shape [window]");
  if (wa.dtype().kind() != 'f' || wa.itemsize() != 4 || !native_order(wa.dtype()))
    fail("weights must have dtype float32");
  require_c_contiguous(wa, "weights");
  const auto* wf = static_cast<const float*>(wa.data());
  job.wexp.resize(static_cast<size_t>(job.window * job.n_out));
  for (int64_t j = 0; j < job.window; ++j) {
    if (!(wf[j] > 0.0f) || !std::isfinite(wf[j])) fail("weights must be finite and > 0");
    for (int64_t k = 0; k < job.n_out; ++k) job.wexp[static_cast<size_t>(j * job.n_out + k)] = wf[j];
  }
}

void set_frames(AvgJob& job, const std::vector<int64_t>& nf) {
  if (nf.empty()) fail("n_frames must list at least one video");
  job.nf = nf;
  job.offset.assign(nf.size() + 1, 0);
  for (size_t v = 0; v < nf.size(); ++v) {
    if (nf[v] <= 0) fail("n_frames[" + std::to_string(v) + "] must be > 0");
    job.offset[v + 1] = job.offset[v] + nf[v];
  }
}

// Column `c` of an int64 array [N] (c < 0) or [N, 2], any strides.
std::vector<int64_t> int64_column(const py::array& a, int c, int64_t n, const char* name) {
  if (!is_int64(a)) fail(std::string(name) + " must have dtype int64");
  if (c < 0 ? a.ndim() != 1 : (a.ndim() != 2 || a.shape(1) != 2))
    fail(std::string(name) + (c < 0 ? " must be 1-D" : " must have shape [N, 2]"));
  if (a.shape(0) != n) fail(std::string(name) + " must have N = window_preds.shape[0] rows");
  std::vector<int64_t> out(static_cast<size_t>(n));
  const char* base = static_cast<const char*>(a.data()) + (c > 0 ? a.strides(1) : 0);
  for (int64_t i = 0; i < n; ++i) std::memcpy(&out[static_cast<size_t>(i)], base + i * a.strides(0), 8);
  return out;
}

std::vector<int64_t> frame_counts(const py::handle& n_frames) {
  std::vector<int64_t> nf;
  if (py::isinstance<py::array>(n_frames)) {
    const py::array a = py::reinterpret_borrow<py::array>(n_frames);
    if (a.ndim() != 1 || (a.dtype().kind() != 'i' && a.dtype().kind() != 'u'))
      fail("n_frames must be 1-D integers");
    const py::array_t<int64_t> c = py::array_t<int64_t>::ensure(a);
    if (!c) {
      PyErr_Clear();
      fail("n_frames must be int64-compatible");
    }
    nf.assign(c.data(), c.data() + c.shape(0));
  } else if (PyLong_Check(n_frames.ptr()) || !PySequence_Check(n_frames.ptr())) {
    nf.push_back(as_int(n_frames, "n_frames"));
  } else {
    const py::sequence seq = py::reinterpret_borrow<py::sequence>(n_frames);
    for (size_t v = 0; v < seq.size(); ++v) nf.push_back(as_int(seq[v], "n_frames"));
  }
  return nf;
}

// average(window_preds, bf16, index, n_frames, weights=None, num_threads=-1) -> (out, row):
// index is starts [N] (one video) or [N, 2] (video, start); n_frames an int or one per video;
// weights None (uniform) or float32 [w]. out [sum n_frames, K] float32; row is the first
// output row no window covers (left NaN), or -1.
py::tuple average(const py::array& preds, bool bf16, const py::array& index,
                  const py::handle& n_frames, const py::object& weights, int64_t num_threads) {
  AvgJob job;
  setup_preds(job, preds, bf16, weights);
  set_frames(job, frame_counts(n_frames));
  std::vector<int64_t> vid;
  if (index.ndim() == 1) {
    job.st = int64_column(index, -1, job.n_windows, "starts");
    vid.assign(static_cast<size_t>(job.n_windows), 0);
  } else {
    job.st = int64_column(index, 1, job.n_windows, "index");
    vid = int64_column(index, 0, job.n_windows, "index");
  }
  plan_average(job, vid);
  py::array_t<float> out(std::vector<py::ssize_t>{job.offset.back(), job.n_out});
  job.out = out.mutable_data();
  const int64_t row = run_average(job, num_threads);
  return py::make_tuple(std::move(out), row);
}

// The older entry point (kept for callers of the extension): separate video / starts arrays,
// caller-allocated out; kind names the dtype.
int64_t overlap_average(const py::array& preds, const std::string& kind, const py::array& video,
                        const py::array& starts, const py::array& n_frames,
                        const py::object& weights, py::array out, int64_t num_threads) {
  if (kind != "float32" && kind != "float16" && kind != "bfloat16")
    fail("kind must be float32, float16 or bfloat16, got '" + kind + "'");
  AvgJob job;
  setup_preds(job, preds, kind == "bfloat16", weights);
  if ((job.kind == Kind::kFloat16) != (kind == "float16"))
    fail("window_preds dtype does not match kind '" + kind + "'");
  require_int64(video, "video");
  require_int64(starts, "starts");
  require_int64(n_frames, "n_frames");
  if (video.ndim() != 1 || video.shape(0) != job.n_windows)
    fail("video must have shape [N] with N = window_preds.shape[0]");
  if (n_frames.ndim() != 1 || n_frames.shape(0) < 1) fail("n_frames must be 1-D and non-empty");
  const auto* nfp = static_cast<const int64_t*>(n_frames.data());
  set_frames(job, std::vector<int64_t>(nfp, nfp + n_frames.shape(0)));
  job.st = int64_column(starts, -1, job.n_windows, "starts");
  const std::vector<int64_t> vid = int64_column(video, -1, job.n_windows, "video");
  if (out.ndim() != 2 || out.shape(0) != job.offset.back() || out.shape(1) != job.n_out)
    fail("out must have shape [sum(n_frames), K]");
  if (out.dtype().kind() != 'f' || out.itemsize() != 4 || !native_order(out.dtype()))
    fail("out must have dtype float32");
  require_c_contiguous(out, "out");
  require_writeable(out, "out");
  plan_average(job, vid);
  job.out = static_cast<float*>(out.mutable_data());
  return run_average(job, num_threads);
}

}  // namespace

void register_segments(py::module_& m) {
  m.def("gather_windows", &gather_windows, py::arg("features"), py::arg("index"),
        py::arg("window"), py::arg("out") = py::none(), py::arg("mask") = py::none(),
        py::arg("num_threads") = -1,
        "Copy windows [B, window, D] out of a list of [T_i, D] arrays; index [B, 2] int64 holds "
        "(video, start) rows. Bytewise copy (any dtype), zero padding, mask [B, window] bool. "
        "Fills out/mask if given (returns None), else returns new (windows, mask).");
  m.def("assemble_windows", &assemble_windows, py::arg("features"), py::arg("window"),
        py::arg("stride"), py::arg("num_threads") = -1,
        "Plan, allocate and fill the windows of one video [T, D]: (windows, mask).");
  m.def("assemble_windows_batch", &assemble_windows_batch, py::arg("features"), py::arg("window"),
        py::arg("stride"), py::arg("num_threads") = -1,
        "The windows of a list of videos: (windows, mask, index [N, 2] (video, start)).");
  m.def("average", &average, py::arg("window_preds"), py::arg("bf16"), py::arg("index"),
        py::arg("n_frames"), py::arg("weights") = py::none(), py::arg("num_threads") = -1,
        "Weighted per-frame mean of window predictions [N, window, K]; index: starts [N] or "
        "(video, start) [N, 2]. Returns (out [sum n_frames, K] float32, first uncovered row or -1).");
  m.def("overlap_average", &overlap_average, py::arg("window_preds"), py::arg("kind"),
        py::arg("video"), py::arg("starts"), py::arg("n_frames"), py::arg("weights"),
        py::arg("out"), py::arg("num_threads") = -1,
        "Weighted per-frame mean of window predictions [N, window, K] into out [sum T_v, K] "
        "float32. Returns the first output row no window covers (left NaN), or -1.");
  m.def("env_flag", &env_flag, py::arg("name"),
        "An AFFACCEL_* flag read with getenv, by the rules of affaccel.env.flag.");
  m.def("parallel_min_bytes", &parallel_min_bytes,
        "Bytes of work per thread below which a call stays on one thread.");
  m.def("set_parallel_min_bytes", &set_parallel_min_bytes, py::arg("nbytes"),
        "Set the per-thread work threshold (0: use every thread whenever there are 2 items).");
  m.def("pool_stats", []() {
    py::dict d;
    d["dispatches"] = ThreadPool::instance().dispatches();
    d["workers"] = ThreadPool::instance().workers();
    return d;
  }, "Calls that woke the thread pool so far, and the pool's started workers (this process).");
}

}  // namespace affaccel

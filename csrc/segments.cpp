// The window engine: cut per-frame feature sequences into overlapping windows (gather_windows)
// and average per-window predictions back to frames (overlap_average).
//
// Python (affaccel/segments.py) validates arguments and allocates the outputs; this file checks
// every shape, dtype and index again before it touches memory, so a bad call raises ValueError
// instead of crashing the process. The heavy loops run with the GIL released on std::thread.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
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
namespace {

// Below this many bytes of work per thread, starting threads costs more than it saves (a
// thread start on a loaded machine can wait a scheduler tick, ~4 ms).
constexpr int64_t kMinBytesPerThread = int64_t{1} << 22;
// Frames per work item of overlap_average: the accumulator (frames x K doubles) stays in L2.
constexpr int64_t kFrameChunk = 1024;

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

void require_int64(const py::array& a, const char* name) {
  const py::dtype dt = a.dtype();
  if (dt.kind() != 'i' || dt.itemsize() != 8 || !native_order(dt))
    fail(std::string(name) + " must have dtype int64");
  require_c_contiguous(a, name);
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

// Outputs larger than this are written with non-temporal stores: they cannot stay in cache
// anyway, and streaming skips the read-for-ownership of every destination line (what glibc's
// memcpy does for large copies too).
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

// windows[b] = features[video_b][start_b : start_b + window], zero-padded; mask[b] marks
// the copied frames. Any element type: the copy is bytewise, so float16 and bfloat16 (passed as
// raw 16-bit integers) are never converted.
void gather_windows(const py::list& features, const py::array& index, int64_t window,
                    py::array out, py::array mask, int64_t num_threads) {
  if (window <= 0) fail("window must be > 0, got " + std::to_string(window));
  const int64_t n_videos = static_cast<int64_t>(features.size());
  if (n_videos == 0) fail("features must hold at least one video");
  if (out.ndim() != 3) fail("out must be 3-D [B, window, D]");
  require_c_contiguous(out, "out");
  require_writeable(out, "out");
  const int64_t n_windows = out.shape(0), cols = out.shape(2);
  const int64_t itemsize = out.itemsize();
  if (out.shape(1) != window) fail("out.shape[1] must equal window");
  if (out.dtype().kind() == 'O') fail("object arrays are not supported");

  // Keep our own references: another Python thread may mutate the list while the GIL is off.
  std::vector<py::array> keep;
  std::vector<Source> src;
  keep.reserve(static_cast<size_t>(n_videos));
  src.reserve(static_cast<size_t>(n_videos));
  for (int64_t v = 0; v < n_videos; ++v) {
    py::handle h = features[static_cast<size_t>(v)];
    if (!py::isinstance<py::array>(h)) fail("features[" + std::to_string(v) + "] is not an array");
    py::array a = py::reinterpret_borrow<py::array>(h);
    const std::string where = "features[" + std::to_string(v) + "]";
    if (a.ndim() != 2) fail(where + " must be 2-D [T, D]");
    if (a.shape(1) != cols) fail(where + " has D=" + std::to_string(a.shape(1)) +
                                 ", expected " + std::to_string(cols));
    if (a.itemsize() != itemsize || a.dtype().kind() != out.dtype().kind())
      fail(where + " has a different dtype than out");
    if (a.shape(0) <= 0) fail(where + " has no frames");
    src.push_back({static_cast<const char*>(a.data()), a.shape(0), a.strides(0), a.strides(1)});
    keep.push_back(std::move(a));
  }

  require_int64(index, "index");
  if (index.ndim() != 2 || index.shape(1) != 2 || index.shape(0) != n_windows)
    fail("index must have shape [B, 2] with B = out.shape[0]");
  const auto* idx = static_cast<const int64_t*>(index.data());
  for (int64_t b = 0; b < n_windows; ++b) {
    const int64_t v = idx[2 * b], s = idx[2 * b + 1];
    if (v < 0 || v >= n_videos)
      fail("index[" + std::to_string(b) + "]: video " + std::to_string(v) + " out of range [0, " +
           std::to_string(n_videos) + ")");
    if (s < 0 || s >= src[static_cast<size_t>(v)].rows)
      fail("index[" + std::to_string(b) + "]: start " + std::to_string(s) +
           " out of range [0, " + std::to_string(src[static_cast<size_t>(v)].rows) + ")");
  }
  if (mask.ndim() != 2 || mask.shape(0) != n_windows || mask.shape(1) != window)
    fail("mask must have shape [B, window]");
  if (mask.dtype().kind() != 'b' || mask.itemsize() != 1) fail("mask must have dtype bool");
  require_c_contiguous(mask, "mask");
  require_writeable(mask, "mask");

  char* out_ptr = static_cast<char*>(out.mutable_data());
  auto* mask_ptr = static_cast<uint8_t*>(mask.mutable_data());
  const int64_t row_bytes = cols * itemsize;
  const int64_t window_bytes = window * row_bytes;
  const int threads = resolve_threads(
      num_threads, std::min(n_windows, n_windows * window_bytes / kMinBytesPerThread + 1));

  const bool stream = n_windows * window_bytes >= kStreamMinBytes;

  py::gil_scoped_release nogil;
  parallel_for(n_windows, threads, [&](int64_t b) {
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

struct Preds {
  const char* data;
  int64_t s0, s1, s2;  // byte strides of [N, w, K]
};

// acc[t, :] += wt * preds[i, j, :] over the frames t of one window that fall in [lo, hi).
// Contig: the K outputs of a position are adjacent (stride known at compile time), which lets
// the compiler vectorize the inner loop; otherwise any byte stride.
template <Kind K, bool Contig>
void accumulate_window(double* acc, double* wsum, int64_t chunk_start, int64_t lo, int64_t hi,
                       int64_t start, const char* pred_row0, const Preds& p, int64_t n_out,
                       const double* weights) {
  constexpr int64_t item = K == Kind::kFloat32 ? 4 : 2;
  const int64_t s2 = Contig ? item : p.s2;
  for (int64_t t = lo; t < hi; ++t) {
    const int64_t j = t - start;
    const double wt = weights[j];
    wsum[t - chunk_start] += wt;
    double* a = acc + (t - chunk_start) * n_out;
    const char* row = pred_row0 + j * p.s1;
    for (int64_t k = 0; k < n_out; ++k) a[k] += wt * static_cast<double>(load<K>(row + k * s2));
  }
}

// The common layout, preds [N, w, K] C-contiguous: the frames [lo, hi) of one window are one
// block of (hi - lo) * K values, added with per-element weights wexp[j * K + k] = weights[j] in a
// single flat loop the compiler vectorizes (no per-frame loop overhead or aliasing checks).
template <Kind K>
void accumulate_block(double* __restrict acc, const char* __restrict src,
                      const double* __restrict wexp, int64_t count) {
  constexpr int64_t item = K == Kind::kFloat32 ? 4 : 2;
  for (int64_t i = 0; i < count; ++i) acc[i] += wexp[i] * static_cast<double>(load<K>(src + i * item));
}

// float32, the usual prediction dtype, gets an AVX2 clone picked at load time: the wheel stays
// baseline x86-64 (no -march=native) but uses 4-wide doubles where the CPU has them.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
__attribute__((target_clones("avx2", "default")))
#endif
void accumulate_block_f32(double* __restrict acc, const float* __restrict src,
                          const double* __restrict wexp, int64_t count) {
  for (int64_t i = 0; i < count; ++i) acc[i] += wexp[i] * static_cast<double>(src[i]);
}

template <>
void accumulate_block<Kind::kFloat32>(double* __restrict acc, const char* __restrict src,
                                      const double* __restrict wexp, int64_t count) {
  // preds rows of float32 are 4-byte aligned here: numpy/torch allocate aligned buffers and the
  // caller only takes this path for aligned data (layout 2 check).
  accumulate_block_f32(acc, reinterpret_cast<const float*>(src), wexp, count);
}

template <Kind K>
void accumulate_any(int layout, double* acc, double* wsum, int64_t chunk_start, int64_t lo,
                    int64_t hi, int64_t start, const char* row0, const Preds& p, int64_t n_out,
                    const double* weights, const double* wexp) {
  if (layout == 2) {
    for (int64_t t = lo; t < hi; ++t) wsum[t - chunk_start] += weights[t - start];
    accumulate_block<K>(acc + (lo - chunk_start) * n_out, row0 + (lo - start) * p.s1,
                        wexp + (lo - start) * n_out, (hi - lo) * n_out);
  } else if (layout == 1)
    accumulate_window<K, true>(acc, wsum, chunk_start, lo, hi, start, row0, p, n_out, weights);
  else
    accumulate_window<K, false>(acc, wsum, chunk_start, lo, hi, start, row0, p, n_out, weights);
}

// out[offset_v + t] = sum_i w[t - s_i] preds[i, t - s_i] / sum_i w[t - s_i] over the windows i
// of video v that cover frame t. Returns the first uncovered output row, or -1.
int64_t overlap_average(const py::array& preds, const std::string& kind, const py::array& video,
                        const py::array& starts, const py::array& n_frames,
                        const py::array& weights, py::array out, int64_t num_threads) {
  if (preds.ndim() != 3) fail("window_preds must be 3-D [N, window, K]");
  const int64_t n_windows = preds.shape(0), window = preds.shape(1), n_out = preds.shape(2);
  const py::dtype dt = preds.dtype();
  Kind k;
  if (kind == "float32" && dt.kind() == 'f' && dt.itemsize() == 4) k = Kind::kFloat32;
  else if (kind == "float16" && dt.kind() == 'f' && dt.itemsize() == 2) k = Kind::kFloat16;
  else if (kind == "bfloat16" && (dt.kind() == 'i' || dt.kind() == 'u') && dt.itemsize() == 2)
    k = Kind::kBFloat16;
  else fail("window_preds dtype does not match kind '" + kind + "'");
  if (!native_order(dt)) fail("window_preds must be in native byte order");
  if (window <= 0) fail("window_preds.shape[1] (the window) must be > 0");

  require_int64(video, "video");
  require_int64(starts, "starts");
  require_int64(n_frames, "n_frames");
  if (video.ndim() != 1 || video.shape(0) != n_windows)
    fail("video must have shape [N] with N = window_preds.shape[0]");
  if (starts.ndim() != 1 || starts.shape(0) != n_windows)
    fail("starts must have shape [N] with N = window_preds.shape[0]");
  if (n_frames.ndim() != 1 || n_frames.shape(0) < 1) fail("n_frames must be 1-D and non-empty");
  const int64_t n_videos = n_frames.shape(0);
  const auto* nf = static_cast<const int64_t*>(n_frames.data());
  std::vector<int64_t> offset(static_cast<size_t>(n_videos) + 1, 0);
  for (int64_t v = 0; v < n_videos; ++v) {
    if (nf[v] <= 0) fail("n_frames[" + std::to_string(v) + "] must be > 0");
    offset[static_cast<size_t>(v) + 1] = offset[static_cast<size_t>(v)] + nf[v];
  }
  const int64_t total = offset.back();
  if (out.ndim() != 2 || out.shape(0) != total || out.shape(1) != n_out)
    fail("out must have shape [sum(n_frames), K]");
  if (out.dtype().kind() != 'f' || out.itemsize() != 4 || !native_order(out.dtype()))
    fail("out must have dtype float32");
  require_c_contiguous(out, "out");
  require_writeable(out, "out");
  if (weights.ndim() != 1 || weights.shape(0) != window)
    fail("weights must have shape [window]");
  if (weights.dtype().kind() != 'f' || weights.itemsize() != 4)
    fail("weights must have dtype float32");
  require_c_contiguous(weights, "weights");

  const auto* vid = static_cast<const int64_t*>(video.data());
  const auto* st = static_cast<const int64_t*>(starts.data());
  // Windows grouped by video (counting sort, stable), validating every index on the way.
  std::vector<int64_t> first(static_cast<size_t>(n_videos) + 1, 0), order(static_cast<size_t>(n_windows));
  for (int64_t i = 0; i < n_windows; ++i) {
    const int64_t v = vid[i];
    if (v < 0 || v >= n_videos)
      fail("video[" + std::to_string(i) + "] = " + std::to_string(v) + " out of range [0, " +
           std::to_string(n_videos) + ")");
    if (st[i] < 0 || st[i] >= nf[v])
      fail("starts[" + std::to_string(i) + "] = " + std::to_string(st[i]) +
           " out of range [0, " + std::to_string(nf[v]) + ")");
    ++first[static_cast<size_t>(v) + 1];
  }
  for (int64_t v = 0; v < n_videos; ++v) first[static_cast<size_t>(v) + 1] += first[static_cast<size_t>(v)];
  {
    std::vector<int64_t> fill(first.begin(), first.end() - 1);
    for (int64_t i = 0; i < n_windows; ++i) order[static_cast<size_t>(fill[static_cast<size_t>(vid[i])]++)] = i;
  }
  std::vector<double> w(static_cast<size_t>(window));
  const auto* wf = static_cast<const float*>(weights.data());
  for (int64_t j = 0; j < window; ++j) {
    if (!(wf[j] > 0.0f) || !std::isfinite(wf[j])) fail("weights must be finite and > 0");
    w[static_cast<size_t>(j)] = wf[j];
  }

  // Work items: (video, chunk of kFrameChunk frames). Each writes only its own output rows.
  std::vector<std::pair<int64_t, int64_t>> items;  // (video, chunk start frame)
  for (int64_t v = 0; v < n_videos; ++v)
    for (int64_t a = 0; a < nf[v]; a += kFrameChunk) items.emplace_back(v, a);

  const Preds p{static_cast<const char*>(preds.data()), preds.strides(0), preds.strides(1),
                preds.strides(2)};
  // 2: each window position's K values adjacent and positions back to back; 1: K values
  // adjacent; 0: any strides.
  const int64_t item = dt.itemsize();
  const bool aligned = reinterpret_cast<uintptr_t>(p.data) % static_cast<uintptr_t>(item) == 0 &&
                       p.s0 % item == 0;
  const int layout = p.s2 != item ? 0 : (p.s1 == n_out * item && aligned ? 2 : 1);
  std::vector<double> wexp(layout == 2 ? static_cast<size_t>(window * n_out) : 0);
  for (size_t e = 0; e < wexp.size(); ++e) wexp[e] = w[e / static_cast<size_t>(n_out)];
  float* out_ptr = static_cast<float*>(out.mutable_data());
  const int64_t work_bytes = n_windows * window * n_out * static_cast<int64_t>(dt.itemsize());
  const int threads = resolve_threads(
      num_threads, std::min<int64_t>(static_cast<int64_t>(items.size()), work_bytes / kMinBytesPerThread + 1));
  std::atomic<int64_t> uncovered{std::numeric_limits<int64_t>::max()};

  {
    py::gil_scoped_release nogil;
    parallel_for(static_cast<int64_t>(items.size()), threads, [&](int64_t item) {
      const int64_t v = items[static_cast<size_t>(item)].first;
      const int64_t a = items[static_cast<size_t>(item)].second;
      const int64_t b = std::min(a + kFrameChunk, nf[v]);
      std::vector<double> acc(static_cast<size_t>((b - a) * n_out), 0.0);
      std::vector<double> wsum(static_cast<size_t>(b - a), 0.0);
      for (int64_t o = first[static_cast<size_t>(v)]; o < first[static_cast<size_t>(v) + 1]; ++o) {
        const int64_t i = order[static_cast<size_t>(o)];
        const int64_t s = st[i];
        const int64_t lo = std::max(a, s), hi = std::min(b, s + window);
        if (lo >= hi) continue;
        const char* row0 = p.data + i * p.s0;
        switch (k) {
          case Kind::kFloat32:
            accumulate_any<Kind::kFloat32>(layout, acc.data(), wsum.data(), a, lo, hi, s, row0, p,
                                           n_out, w.data(), wexp.data());
            break;
          case Kind::kFloat16:
            accumulate_any<Kind::kFloat16>(layout, acc.data(), wsum.data(), a, lo, hi, s, row0, p,
                                           n_out, w.data(), wexp.data());
            break;
          case Kind::kBFloat16:
            accumulate_any<Kind::kBFloat16>(layout, acc.data(), wsum.data(), a, lo, hi, s, row0,
                                            p, n_out, w.data(), wexp.data());
            break;
        }
      }
      float* o = out_ptr + (offset[static_cast<size_t>(v)] + a) * n_out;
      for (int64_t t = 0; t < b - a; ++t) {
        const double ws = wsum[static_cast<size_t>(t)];
        if (ws > 0.0) {
          const double inv = 1.0 / ws;
          for (int64_t c = 0; c < n_out; ++c)
            o[t * n_out + c] = static_cast<float>(acc[static_cast<size_t>(t * n_out + c)] * inv);
        } else {  // no window covers this frame: NaN here, and the caller raises ValueError
          for (int64_t c = 0; c < n_out; ++c) o[t * n_out + c] = std::numeric_limits<float>::quiet_NaN();
          int64_t row = offset[static_cast<size_t>(v)] + a + t;
          int64_t cur = uncovered.load();
          while (row < cur && !uncovered.compare_exchange_weak(cur, row)) {
          }
        }
      }
    });
  }
  const int64_t first_uncovered = uncovered.load();
  return first_uncovered == std::numeric_limits<int64_t>::max() ? -1 : first_uncovered;
}

}  // namespace

void register_segments(py::module_& m) {
  m.def("gather_windows", &gather_windows, py::arg("features"), py::arg("index"),
        py::arg("window"), py::arg("out"), py::arg("mask"), py::arg("num_threads") = 0,
        "Copy windows [B, window, D] out of a list of [T_i, D] arrays; index [B, 2] int64 holds "
        "(video, start) rows. Bytewise copy (any dtype), zero padding, mask [B, window] bool.");
  m.def("overlap_average", &overlap_average, py::arg("window_preds"), py::arg("kind"),
        py::arg("video"), py::arg("starts"), py::arg("n_frames"), py::arg("weights"),
        py::arg("out"), py::arg("num_threads") = 0,
        "Weighted per-frame mean of window predictions [N, window, K] into out [sum T_v, K] "
        "float32. Returns the first output row no window covers (left NaN), or -1.");
}

}  // namespace affaccel

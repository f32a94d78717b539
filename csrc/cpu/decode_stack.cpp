// ember.DecodeStack: a whole decode step through every decoder layer in one native call.
//
// Why: at batch 1 on SmolLM2 the matmuls of a step take about 9 ms at 2 threads, and the ~20 torch ops per layer
// around them (norms, splits, views, the KV write, attention, SiLU) another 4 ms, almost all of it dispatch and
// allocation, not arithmetic. llama.cpp runs its whole graph natively; so does this, for the steps whose rows are
// all decodes (one query token each, verified drafts included), with the same kernels the torch model calls, in
// the same order, so the hidden states are bit-identical to the model's (a test holds it to that).
//
// The stack is built once at load from the model's own tensors (no copies): per layer its two norms and its four
// projections, where the attention's input projection may be q/k/v joined or three matrices, and the MLP's
// gate/up joined or two (their outputs side by side, as the model concatenates them).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <immintrin.h>
#include <omp.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "kernels.h"
#include "ops.h"
#include "quant_view.h"

namespace ember::cpu {
namespace {

// A quantized projection and the tensors its view points into (held, so the view cannot dangle).
struct Projection {
  QuantView w;
  std::vector<at::Tensor> held;
  // Rows from which it runs as the 8-bit x kernel's matrix product: the layer's own choice (QuantLinear's
  // product_from_rows), so that a step's sums are the torch model's at every row count.
  int64_t product_from_rows = std::numeric_limits<int64_t>::max();
};

// The checked view of a quantized matrix's tensors for inputs of k columns, holding every tensor it points into.
Projection projection(const at::Tensor& q, const at::Tensor& scales, const std::optional<at::Tensor>& mins,
                      const std::optional<at::Tensor>& super_scales, const std::optional<at::Tensor>& super_mins,
                      const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size, int64_t k) {
  Projection p{quant_view(q, scales, mins, super_scales, super_mins, bias, bits, group_size, k), {q, scales}};
  for (const auto* t : {&mins, &super_scales, &super_mins, &bias}) {
    if (t->has_value()) p.held.push_back(**t);
  }
  return p;
}

enum Part : int64_t { kAttnIn = 0, kAttnOut = 1, kMlpIn = 2, kMlpOut = 3 };

struct Layer {
  at::Tensor input_norm, post_norm;
  std::vector<Projection> parts[4];
};

inline float load_bf16(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// A barrier for the threads of one parallel region. It spins first: the stages between waits take microseconds
// and a sleeping thread takes tens of them to wake. Past that it sleeps on a futex, so that when the machine has
// more runnable threads than cores (a worker's event loop, the gateway and NATS beside its two compute threads on
// a 2-core box) a thread whose partner was descheduled gives its core up instead of spinning through its slice.
class SpinBarrier {
 public:
  void reset(int count) { count_ = count; }

  void wait() {
    const int generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == count_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_seq_cst);
      if (sleepers_.load(std::memory_order_seq_cst) > 0) futex(FUTEX_WAKE_PRIVATE, INT32_MAX);
      return;
    }
    for (int spins = 0; spins < kSpins; ++spins) {
      if (generation_.load(std::memory_order_acquire) != generation) return;
      _mm_pause();
    }
    // Either the last thread sees this sleeper and wakes it, or this thread sees the new generation (both seq_cst);
    // FUTEX_WAIT itself returns at once if the generation moved on before it sleeps.
    sleepers_.fetch_add(1, std::memory_order_seq_cst);
    while (generation_.load(std::memory_order_seq_cst) == generation) futex(FUTEX_WAIT_PRIVATE, generation);
    sleepers_.fetch_sub(1, std::memory_order_relaxed);
  }

 private:
  void futex(int op, int value) {
    syscall(SYS_futex, reinterpret_cast<int*>(&generation_), op, value, nullptr, nullptr, 0);
  }

  static constexpr int kSpins = 4096;  // about 0.1-0.2 ms of pause instructions
  int count_ = 1;
  std::atomic<int> arrived_{0};
  std::atomic<int> generation_{0};
  std::atomic<int> sleepers_{0};
};

// The output tiles of one matmul (8 outputs each, the kernels' widest), handed out to a team as it asks for them:
// each take is the tiles left over twice the team (guided scheduling, never under kMinTiles), from one atomic
// counter. An even split made each thread wait at the next barrier for the slower one, and on a busy box the
// slower one is whichever the OS gave its core to something else (the worker's event loop, the gateway and NATS
// beside two compute threads on 2 cores): serving Qwen2.5-Coder-1.5B under other load, thread 0 slept in the
// barrier for 42% of the step (py-spy). Here the thread that runs takes the work; the numbers are the same, since
// each output is computed whole by whichever thread takes its tile. Measured in process (2 threads, medians of 3
// interleaved runs): with a third busy thread on the 2 cores a Qwen2.5-Coder-1.5B step took 148 ms against the even
// split's 164; idle, 66 ms either way, and SmolLM2's 7.0 ms either way (the few atomics per matmul do not show).
class TileQueue {
 public:
  // [first, last) of `tiles` for a thread of a team of `team`; first == last when none are left.
  std::pair<int64_t, int64_t> take(int64_t tiles, int team) {
    int64_t first = next_.load(std::memory_order_relaxed);
    while (first < tiles) {
      const int64_t count = std::max<int64_t>(kMinTiles, (tiles - first) / (2 * team));
      if (next_.compare_exchange_weak(first, first + count, std::memory_order_relaxed)) {
        return {first, std::min(tiles, first + count)};
      }
    }
    return {tiles, tiles};
  }

 private:
  static constexpr int64_t kMinTiles = 2;
  std::atomic<int64_t> next_{0};
};

}  // namespace

class DecodeStack : public torch::CustomClassHolder {
 public:
  DecodeStack(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t inner, double eps)
      : hidden_(hidden), heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), inner_(inner), eps_(eps) {
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0, "heads must be a multiple of kv_heads");
    TORCH_CHECK(head_dim % 2 == 0, "head_dim must be even");
  }

  void add_layer(const at::Tensor& input_norm, const at::Tensor& post_norm) {
    for (const at::Tensor* t : {&input_norm, &post_norm}) {
      TORCH_CHECK(t->dim() == 1 && t->size(0) == hidden_ && t->is_contiguous(), "a norm weight must be [hidden]");
    }
    TORCH_CHECK(layers_.empty() || input_norm.scalar_type() == layers_[0].input_norm.scalar_type(),
                "every norm must share one dtype");
    layers_.push_back(Layer{input_norm, post_norm, {}});
  }

  // A projection of the last layer added: part 0 the attention's input (q, k, v: joined or in that order), 1 its
  // output, 2 the MLP's input (gate, up: joined or in that order), 3 its output.
  void add_projection(int64_t part, const at::Tensor& q, const at::Tensor& scales,
                      const std::optional<at::Tensor>& mins,
                      const std::optional<at::Tensor>& super_scales, const std::optional<at::Tensor>& super_mins,
                      const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size,
                      int64_t product_from_rows) {
    TORCH_CHECK(!layers_.empty(), "add_layer first");
    TORCH_CHECK(part >= kAttnIn && part <= kMlpOut, "part must be 0..3");
    const int64_t k = part == kAttnOut ? heads_ * head_dim_ : part == kMlpOut ? inner_ : hidden_;
    layers_.back().parts[part].push_back(
        projection(q, scales, mins, super_scales, super_mins, bias, bits, group_size, k));
    layers_.back().parts[part].back().product_from_rows = product_from_rows;
  }

  // The vocabulary projection, for run's logits.
  void set_head(const at::Tensor& q, const at::Tensor& scales, const std::optional<at::Tensor>& mins,
                const std::optional<at::Tensor>& super_scales, const std::optional<at::Tensor>& super_mins,
                const std::optional<at::Tensor>& bias, int64_t bits, int64_t group_size, int64_t product_from_rows) {
    head_ = projection(q, scales, mins, super_scales, super_mins, bias, bits, group_size, hidden_);
    head_->product_from_rows = product_from_rows;
  }

  // Checks that every layer has its four parts, of the widths the model's shapes call for.
  void finish() {
    const int64_t widths[4] = {(heads_ + 2 * kv_heads_) * head_dim_, hidden_, 2 * inner_, hidden_};
    matmuls_ = 0;
    for (size_t l = 0; l < layers_.size(); ++l) {
      for (int part = 0; part < 4; ++part) {
        int64_t width = 0;
        for (const Projection& p : layers_[l].parts[part]) width += p.w.n;
        TORCH_CHECK(width == widths[part], "layer ", l, " part ", part, ": outputs ", width, ", expected ",
                    widths[part]);
        TORCH_CHECK((part == kAttnOut || part == kMlpOut) ? layers_[l].parts[part].size() == 1 : true,
                    "the output projections are single matrices");
        matmuls_ += static_cast<int64_t>(layers_[l].parts[part].size());
      }
    }
    matmuls_ += 1;  // the head
    finished_ = true;
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // Final-normed hidden states [M, hidden] for decode rows whose embeddings are x [M, hidden]; every row's new K/V
  // is written at slots [M] (int64) of the caches [layers, num_blocks, block_size, KV, hd] before any row of its
  // layer attends, over block_table [M, max_blocks] / context_lens [M] (int32). With `logits` (and a head set),
  // also every row's float32 logits [M, V] (the head's output in x's dtype, then widened, as the model computes
  // them); else an empty tensor in their place.
  std::tuple<at::Tensor, at::Tensor> run(const at::Tensor& x, const at::Tensor& final_norm, const at::Tensor& positions,
                 const at::Tensor& slots, const at::Tensor& k_cache, const at::Tensor& v_cache,
                 const at::Tensor& block_table, const at::Tensor& context_lens, const at::Tensor& cos,
                 const at::Tensor& sin, bool logits) {
    TORCH_CHECK(finished_, "finish() the stack before running it");
    TORCH_CHECK(!logits || head_.has_value(), "set_head() before asking for logits");
    TORCH_CHECK(x.dim() == 2 && x.size(1) == hidden_ && x.is_contiguous(), "x must be contiguous [M, hidden]");
    const int64_t rows = x.size(0);
    TORCH_CHECK(rows > 0, "no rows");
    const auto dtype = x.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "x must be float32 or bfloat16");
    TORCH_CHECK(dtype == layers_[0].input_norm.scalar_type() && dtype == final_norm.scalar_type() &&
                    dtype == cos.scalar_type() && dtype == sin.scalar_type() && dtype == k_cache.scalar_type() &&
                    dtype == v_cache.scalar_type(),
                "x, the norms, the rotary tables and the caches must share one dtype");
    TORCH_CHECK(final_norm.dim() == 1 && final_norm.size(0) == hidden_ && final_norm.is_contiguous(),
                "final_norm must be [hidden]");
    TORCH_CHECK(k_cache.dim() == 5 && k_cache.sizes() == v_cache.sizes() && k_cache.is_contiguous() &&
                    v_cache.is_contiguous() && k_cache.size(0) == num_layers() && k_cache.size(3) == kv_heads_ &&
                    k_cache.size(4) == head_dim_,
                "the caches must be contiguous [layers, num_blocks, block_size, KV, hd]");
    TORCH_CHECK(positions.scalar_type() == at::kLong && slots.scalar_type() == at::kLong && positions.dim() == 1 &&
                    slots.dim() == 1 && positions.size(0) == rows && slots.size(0) == rows &&
                    positions.is_contiguous() && slots.is_contiguous(),
                "positions and slots must be contiguous int64 [M]");
    TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.size(1) == head_dim_ && cos.is_contiguous() &&
                    sin.is_contiguous(),
                "cos and sin must be contiguous [P, head_dim]");
    TORCH_CHECK(block_table.scalar_type() == at::kInt && context_lens.scalar_type() == at::kInt &&
                    block_table.dim() == 2 && block_table.size(0) == rows && context_lens.size(0) == rows &&
                    block_table.is_contiguous() && context_lens.is_contiguous(),
                "block_table must be contiguous int32 [M, max_blocks] and context_lens int32 [M]");
    const int64_t num_blocks = k_cache.size(1), block_size = k_cache.size(2), max_blocks = block_table.size(1);
    const int64_t* pos = positions.data_ptr<int64_t>();
    const int64_t* slot = slots.data_ptr<int64_t>();
    const int32_t* lens = context_lens.data_ptr<int32_t>();
    const int32_t* table = block_table.data_ptr<int32_t>();
    for (int64_t r = 0; r < rows; ++r) {
      TORCH_CHECK(pos[r] >= 0 && pos[r] < cos.size(0), "position ", pos[r], " is outside the rotary tables");
      TORCH_CHECK(slot[r] >= 0 && slot[r] < num_blocks * block_size, "slot ", slot[r], " is outside the cache");
    }
    check_paged_context(table, lens, rows, max_blocks, block_size, num_blocks);
    at::Tensor out = x.clone();
    at::Tensor head_out = logits ? at::empty({rows, head_->w.n}, x.options().dtype(at::kFloat)) : at::Tensor();
    float* head_ptr = logits ? head_out.data_ptr<float>() : nullptr;
    if (dtype == at::kFloat) {
      forward<float>(out, final_norm, pos, slot, k_cache, v_cache, table, lens, max_blocks, cos, sin, head_ptr);
    } else {
      forward<uint16_t>(out, final_norm, pos, slot, k_cache, v_cache, table, lens, max_blocks, cos, sin, head_ptr);
    }
    return {out, logits ? head_out : at::empty({0}, x.options().dtype(at::kFloat))};
  }

 private:
  template <typename T>
  void forward(at::Tensor& x, const at::Tensor& final_norm, const int64_t* pos, const int64_t* slot,
               const at::Tensor& k_cache, const at::Tensor& v_cache, const int32_t* table, const int32_t* lens,
               int64_t max_blocks, const at::Tensor& cos, const at::Tensor& sin, float* logits) {
    const int64_t rows = x.size(0), d = hidden_, hd = head_dim_;
    const int64_t q_width = heads_ * hd, kv_width = kv_heads_ * hd, qkv_width = q_width + 2 * kv_width;
    const int64_t block_size = k_cache.size(2), layer_stride = k_cache.stride(0);
    const float eps = static_cast<float>(eps_), scale = static_cast<float>(std::pow(static_cast<double>(hd), -0.5));
    // The residual stream starts at zero: the first layer's residual add then leaves it equal to x, and its norm is
    // the norm of x, as the model computes for layer 0 (adding 0.0 to a float is exact).
    std::vector<T> residual(rows * d, 0), qkv(rows * qkv_width), attn(rows * q_width), h(rows * d),
        gate_up(rows * 2 * inner_), act(rows * inner_);
    // Separate q/k/v or gate/up matrices write their own outputs, copied into their columns after.
    std::vector<std::vector<T>> parts_out(3);
    std::vector<PreparedX> prepared(3);
    // The head's output in T before widening (float32 models write the logits directly).
    std::vector<T> head_t(logits != nullptr && !std::is_same_v<T, float> ? rows * head_->w.n : 0);
    T* xs = ptr<T>(x);
    T* kc = ptr<T>(k_cache);
    T* vc = ptr<T>(v_cache);
    const T* cos_t = ptr<T>(cos);
    const T* sin_t = ptr<T>(sin);

    // Every thread of one team runs the whole step: the matmuls and the attention split between them, the small
    // ops on thread 0, and a spin barrier between stages. One parallel region per step instead of one per op: at
    // ~150 ops a step, waking the pool's threads for each (they sleep between regions) cost more than the ops.
    SpinBarrier barrier;
    // One queue per matmul of the step, in the order every thread meets them.
    std::vector<TileQueue> queues(matmuls_);
    const int requested = std::max(1, at::get_num_threads());
#pragma omp parallel num_threads(requested)
    {
      const int team = omp_get_num_threads(), tid = omp_get_thread_num();
      if (tid == 0) barrier.reset(team);
#pragma omp barrier
      // The next matmul's n outputs, in ranges of whole tiles as this thread takes them: body(begin, end).
      int64_t matmul = 0;
      auto share = [&](int64_t n, auto&& body) {
        TileQueue& queue = queues[matmul++];
        for (;;) {
          const auto [first, last] = queue.take((n + 7) / 8, team);
          if (first == last) return;
          body(first * 8, std::min(n, last * 8));
        }
      };
      // x [rows, k] through one part's projections into out [rows, width]: prepare (thread 0), matmul (split),
      // then thread 0 copies separate matrices' outputs into their columns.
      auto project = [&](const std::vector<Projection>& ps, const T* in, T* out, int64_t width) {
        if (tid == 0) {
          for (size_t i = 0; i < ps.size(); ++i) {
            quant_linear_prepare(ps[i].w, in, rows, prepared[i], rows >= ps[i].product_from_rows);
          }
          if (ps.size() > 1) {
            for (size_t i = 0; i < ps.size(); ++i) parts_out[i].resize(rows * ps[i].w.n);
          }
        }
        barrier.wait();
        for (size_t i = 0; i < ps.size(); ++i) {
          T* dst = ps.size() == 1 ? out : parts_out[i].data();
          share(ps[i].w.n, [&](int64_t begin, int64_t end) {
            quant_linear_part(ps[i].w, prepared[i], in, dst, rows, begin, end);
          });
        }
        barrier.wait();
        if (tid == 0 && ps.size() > 1) {
          int64_t column = 0;
          for (size_t i = 0; i < ps.size(); ++i) {
            const int64_t n = ps[i].w.n;
            for (int64_t r = 0; r < rows; ++r) {
              std::memcpy(out + r * width + column, parts_out[i].data() + r * n, n * sizeof(T));
            }
            column += n;
          }
        }
      };
      for (size_t l = 0; l < layers_.size(); ++l) {
        const Layer& layer = layers_[l];
        T* layer_k = kc + l * layer_stride;
        T* layer_v = vc + l * layer_stride;
        if (tid == 0) add_rms_norm_rows(xs, residual.data(), ptr<T>(layer.input_norm), rows, d, eps);
        project(layer.parts[kAttnIn], xs, qkv.data(), qkv_width);
        if (tid == 0) {
          rotary_rows(qkv.data(), qkv_width, rows, heads_, hd, cos_t, sin_t, pos);
          rotary_rows(qkv.data() + q_width, qkv_width, rows, kv_heads_, hd, cos_t, sin_t, pos);
          // Every row's K/V is in the cache before any row attends (a verified draft sees the rows before it).
          for (int64_t r = 0; r < rows; ++r) {
            const T* row = qkv.data() + r * qkv_width;
            std::memcpy(layer_k + slot[r] * kv_width, row + q_width, kv_width * sizeof(T));
            std::memcpy(layer_v + slot[r] * kv_width, row + q_width + kv_width, kv_width * sizeof(T));
          }
        }
        barrier.wait();
        {
          const int64_t tasks = rows * kv_heads_, per = tasks / team, extra = tasks % team;
          const int64_t first = tid * per + std::min<int64_t>(tid, extra);
          const int64_t count = per + (tid < extra ? 1 : 0);
          if (count > 0) {
            paged_decode_part_rows(attn.data(), static_cast<const T*>(qkv.data()), qkv_width,
                                   static_cast<const T*>(layer_k), static_cast<const T*>(layer_v), table, lens, heads_,
                                   kv_heads_, hd, block_size, max_blocks, scale, first, first + count);
          }
        }
        barrier.wait();
        project(layer.parts[kAttnOut], attn.data(), h.data(), d);
        if (tid == 0) add_rms_norm_rows(h.data(), residual.data(), ptr<T>(layer.post_norm), rows, d, eps);
        project(layer.parts[kMlpIn], h.data(), gate_up.data(), 2 * inner_);
        if (tid == 0) silu_mul_rows(act.data(), static_cast<const T*>(gate_up.data()), rows, inner_);
        project(layer.parts[kMlpOut], act.data(), xs, d);
      }
      if (tid == 0) add_rms_norm_rows(xs, residual.data(), ptr<T>(final_norm), rows, d, eps);
      if (logits != nullptr) {
        const QuantView& w = head_->w;
        if (tid == 0) {
          quant_linear_prepare(w, static_cast<const T*>(xs), rows, prepared[0], rows >= head_->product_from_rows);
        }
        barrier.wait();
        share(w.n, [&](int64_t begin, int64_t end) {
          if constexpr (std::is_same_v<T, float>) {
            quant_linear_part(w, prepared[0], static_cast<const T*>(xs), logits, rows, begin, end);
          } else {
            quant_linear_part(w, prepared[0], static_cast<const T*>(xs), head_t.data(), rows, begin, end);
            for (int64_t r = 0; r < rows; ++r) {
              for (int64_t n = begin; n < end; ++n) logits[r * w.n + n] = load_bf16(head_t[r * w.n + n]);
            }
          }
        });
      }
    }
  }

  int64_t hidden_, heads_, kv_heads_, head_dim_, inner_;
  double eps_;
  std::vector<Layer> layers_;
  std::optional<Projection> head_;
  int64_t matmuls_ = 0;  // per step: every projection of every layer, and the head
  bool finished_ = false;
};

TORCH_LIBRARY_FRAGMENT(ember, m) {
  m.class_<DecodeStack>("DecodeStack")
      .def(torch::init<int64_t, int64_t, int64_t, int64_t, int64_t, double>())
      .def("add_layer", &DecodeStack::add_layer)
      .def("add_projection", &DecodeStack::add_projection)
      .def("set_head", &DecodeStack::set_head)
      .def("finish", &DecodeStack::finish)
      .def("num_layers", &DecodeStack::num_layers)
      .def("run", &DecodeStack::run);
}

}  // namespace ember::cpu

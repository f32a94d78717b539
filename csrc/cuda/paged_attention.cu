// ember::paged_decode on CUDA: one query token per row attending over its context in the paged KV cache, reading
// the blocks where they are, as csrc/cpu/paged_attention_impl.h does on the CPU.
//
// Work split: a block of threads per (query head, row, partition of kPartition positions), so that a single long
// context still spreads over the GPU's multiprocessors (12 heads x 1 row would leave 120 of an H100's 132 idle);
// each partition keeps its running max, its sum of exponentials and its weighted sum of V, and a second kernel
// combines the partitions (the split-softmax of flash-decoding). Where one partition covers every row's context,
// the first kernel writes the output itself and the second is not launched. Within a partition: a warp per key
// (its lanes split head_dim) for the scores, kept in shared memory; then each thread owns a dimension of the output
// (two, past 128) and sums the partition's V rows for it, threads of another group of keys beside it where
// head_dim is small.

#include "common.cuh"

namespace ember::cuda {

constexpr int kPartition = 512;  // positions a block of threads takes from one row's context
constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 2 * kThreads;

// Where the row's position `pos` lives: its block from the table, or -1 where the block lies outside the cache.
__device__ __forceinline__ long long block_of(const int* table, int pos, int block_size, long long num_blocks) {
  const long long block = table[pos / block_size];
  return block >= 0 && block < num_blocks ? block : -1;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    paged_decode_kernel(T* __restrict__ out, float* __restrict__ part_acc, float* __restrict__ part_max,
                        float* __restrict__ part_sum, const T* __restrict__ q, const T* __restrict__ k_cache,
                        const T* __restrict__ v_cache, const int* __restrict__ block_table,
                        const int* __restrict__ context_lens, int heads, int kv_heads, int head_dim, int block_size,
                        int max_blocks, long long num_blocks, int partitions, float scale) {
  __shared__ float qs[kMaxHeadDim];
  __shared__ float scores[kPartition];
  __shared__ float scratch[32];
  __shared__ float sums[kThreads];
  const int h = blockIdx.x, b = blockIdx.y, p = blockIdx.z;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const long long slot = (static_cast<long long>(b) * heads + h) * partitions + p;  // this partition's workspace
  T* o = out + (static_cast<long long>(b) * heads + h) * head_dim;
  const int len = context_lens[b];
  const int start = p * kPartition;
  if (len < 1 || len > max_blocks * block_size) {  // a row outside the table: NaN, never a read out of bounds
    if (p == 0) {
      for (int d = tid; d < head_dim; d += kThreads) o[d] = from_float<T>(quiet_nan());
    }
    return;
  }
  if (start >= len) return;  // past this row's context: the combining kernel reads only the partitions before
  const int n = min(len - start, kPartition);
  const int group = heads / kv_heads, kvh = h / group;
  const long long token_stride = static_cast<long long>(kv_heads) * head_dim;
  const long long block_stride = block_size * token_stride;
  const int* table = block_table + static_cast<long long>(b) * max_blocks;
  const T* qh = q + (static_cast<long long>(b) * heads + h) * head_dim;
  for (int d = tid; d < head_dim; d += kThreads) qs[d] = to_float(qh[d]);
  __syncthreads();

  // Scores: warp w takes positions w, w + 4, ...
  float local_max = minus_infinity();
  int outside = 0;
  for (int t = warp; t < n; t += kThreads / 32) {
    const int pos = start + t;
    const long long block = block_of(table, pos, block_size, num_blocks);
    if (block < 0) {
      outside = 1;
      continue;
    }
    const T* kr = k_cache + block * block_stride + (pos % block_size) * token_stride + kvh * head_dim;
    float dot = 0.0f;
    for (int d = lane; d < head_dim; d += 32) dot += qs[d] * to_float(kr[d]);
    const float s = warp_sum(dot) * scale;
    if (lane == 0) scores[t] = s;
    local_max = fmaxf(local_max, s);
  }
  if (__syncthreads_or(outside)) {  // a block outside the cache: this row's output is NaN
    if (partitions == 1) {
      for (int d = tid; d < head_dim; d += kThreads) o[d] = from_float<T>(quiet_nan());
    } else if (tid == 0) {
      part_max[slot] = part_sum[slot] = quiet_nan();
    }
    return;
  }
  const float m = block_max(local_max, scratch);
  float local_sum = 0.0f;
  for (int t = tid; t < n; t += kThreads) {
    const float e = __expf(scores[t] - m);
    scores[t] = e;
    local_sum += e;
  }
  const float l = block_sum(local_sum, scratch);  // its barriers also publish the exponentials

  // The weighted sum of V: thread (g, d) sums dimensions d (and d + span) over positions g, g + groups, ...
  const int span = head_dim < kThreads ? head_dim : kThreads;
  const int groups = kThreads / span;
  const int g = tid / span, d = tid % span;
  const bool second = d + span < head_dim;
  float acc0 = 0.0f, acc1 = 0.0f;
  if (g < groups) {
    for (int t = g; t < n; t += groups) {
      const int pos = start + t;
      const T* vr = v_cache + block_of(table, pos, block_size, num_blocks) * block_stride +
                    (pos % block_size) * token_stride + kvh * head_dim;
      const float w = scores[t];
      acc0 += w * to_float(vr[d]);
      if (second) acc1 += w * to_float(vr[d + span]);
    }
  }
  if (groups > 1) {  // head_dim <= 64: one dimension a thread, the groups' sums added by group 0
    if (g < groups) sums[tid] = acc0;
    __syncthreads();
    if (g == 0) {
      for (int other = 1; other < groups; ++other) acc0 += sums[other * span + d];
    }
  }
  if (g != 0) return;
  if (partitions == 1) {
    const float inv = 1.0f / l;
    o[d] = from_float<T>(acc0 * inv);
    if (second) o[d + span] = from_float<T>(acc1 * inv);
  } else {
    float* acc = part_acc + slot * head_dim;
    acc[d] = acc0;
    if (second) acc[d + span] = acc1;
    if (tid == 0) {
      part_max[slot] = m;
      part_sum[slot] = l;
    }
  }
}

// out[b, h] from the partitions that row b's context reaches: each one's weighted sum of V and sum of exponentials,
// rescaled from its own max to the row's.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    paged_decode_combine(T* __restrict__ out, const float* __restrict__ part_acc, const float* __restrict__ part_max,
                         const float* __restrict__ part_sum, const int* __restrict__ context_lens, int heads,
                         int head_dim, int max_context, int partitions) {
  const int h = blockIdx.x, b = blockIdx.y;
  const int len = context_lens[b];
  if (len < 1 || len > max_context) return;  // the first kernel wrote this row's NaN
  const int used = (len + kPartition - 1) / kPartition;
  const long long first = (static_cast<long long>(b) * heads + h) * partitions;
  float m = minus_infinity();
  bool poisoned = false;
  for (int p = 0; p < used; ++p) {
    const float mp = part_max[first + p];
    poisoned |= mp != mp;  // NaN: a block outside the cache
    m = fmaxf(m, mp);
  }
  float total = 0.0f;
  for (int p = 0; p < used; ++p) total += __expf(part_max[first + p] - m) * part_sum[first + p];
  const float inv = poisoned ? quiet_nan() : 1.0f / total;
  T* o = out + (static_cast<long long>(b) * heads + h) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += kThreads) {
    float acc = 0.0f;
    for (int p = 0; p < used; ++p) acc += __expf(part_max[first + p] - m) * part_acc[(first + p) * head_dim + d];
    o[d] = from_float<T>(acc * inv);
  }
}

}  // namespace ember::cuda

#ifdef __CUDACC_RTC__
#define EMBER_INSTANTIATE(T)                                                                                        \
  template __global__ void ember::cuda::paged_decode_kernel<T>(T*, float*, float*, float*, const T*, const T*,      \
                                                               const T*, const int*, const int*, int, int, int, int, \
                                                               int, long long, int, float);                          \
  template __global__ void ember::cuda::paged_decode_combine<T>(T*, const float*, const float*, const float*,       \
                                                                const int*, int, int, int, int);
EMBER_FOR_STORAGE_TYPES(EMBER_INSTANTIATE)
#undef EMBER_INSTANTIATE
#else
#include "dtype_dispatch.cuh"

namespace ember::cuda {
namespace {

int64_t partitions_for(int64_t max_context) { return (max_context + kPartition - 1) / kPartition; }

template <typename T>
void launch(T* out, const T* q, const T* k_cache, const T* v_cache, const int32_t* block_table,
            const int32_t* context_lens, int64_t batch, int64_t heads, int64_t kv_heads, int64_t head_dim,
            int64_t num_blocks, int64_t block_size, int64_t max_blocks, float scale, float* workspace,
            cudaStream_t stream) {
  const int64_t partitions = partitions_for(max_blocks * block_size);
  const int64_t slots = batch * heads * partitions;
  float* part_acc = partitions > 1 ? workspace : nullptr;
  float* part_max = partitions > 1 ? workspace + slots * head_dim : nullptr;
  float* part_sum = partitions > 1 ? part_max + slots : nullptr;
  const dim3 grid(static_cast<unsigned>(heads), static_cast<unsigned>(batch), static_cast<unsigned>(partitions));
  EMBER_LAUNCH(grid, kThreads, stream, paged_decode_kernel<T>)(
      out, part_acc, part_max, part_sum, q, k_cache, v_cache, block_table, context_lens, static_cast<int>(heads),
      static_cast<int>(kv_heads), static_cast<int>(head_dim), static_cast<int>(block_size),
      static_cast<int>(max_blocks), num_blocks, static_cast<int>(partitions), scale);
  if (partitions > 1) {
    const dim3 rows(static_cast<unsigned>(heads), static_cast<unsigned>(batch));
    EMBER_LAUNCH(rows, kThreads, stream, paged_decode_combine<T>)(
        out, part_acc, part_max, part_sum, context_lens, static_cast<int>(heads), static_cast<int>(head_dim),
        static_cast<int>(max_blocks * block_size), static_cast<int>(partitions));
  }
}

}  // namespace

int64_t paged_decode_workspace(int64_t batch, int64_t heads, int64_t head_dim, int64_t max_context) {
  const int64_t partitions = partitions_for(max_context);
  return partitions > 1 ? batch * heads * partitions * (head_dim + 2) : 0;
}

cudaError_t launch_paged_decode(DType dtype, void* out, const void* q, const void* k_cache, const void* v_cache,
                                const int32_t* block_table, const int32_t* context_lens, int64_t batch, int64_t heads,
                                int64_t kv_heads, int64_t head_dim, int64_t num_blocks, int64_t block_size,
                                int64_t max_blocks, float scale, float* workspace, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (head_dim > kMaxHeadDim) return cudaErrorInvalidValue;
  return with_type(dtype, [&](auto* tag) {
    using T = storage_t<decltype(tag)>;
    launch<T>(static_cast<T*>(out), static_cast<const T*>(q), static_cast<const T*>(k_cache),
              static_cast<const T*>(v_cache), block_table, context_lens, batch, heads, kv_heads, head_dim, num_blocks,
              block_size, max_blocks, scale, workspace, stream);
  });
}

}  // namespace ember::cuda
#endif

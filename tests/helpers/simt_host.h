// A small SIMT emulator: Ember's CUDA kernels compiled for the host and run on the CPU, each GPU thread a fiber
// (ucontext), one block at a time, so that the CPU test suite runs the kernels' own code where there is no GPU.
// What it models: the thread and block indices; __syncthreads and __syncthreads_or over the block's live threads
// (a thread that returned counts as arrived, as on current GPUs); warp shuffles as an exchange between a warp's
// live lanes; __shared__ as storage shared by the block's fibers. What it does not: timing, memory ordering beyond
// the barriers, or divergence within a warp at a shuffle (every lane must reach it: the emulator aborts on a
// barrier it can never release). Fibers run in thread order or in reverse, so that a read of shared memory that
// lacks its barrier sees different values in the two orders. Include this before the .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <ucontext.h>
#include <vector_types.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace ember::host {

// Thread order within a block: false, 0 first; true, the last first.
inline bool reverse_order = false;

enum class Wait { kNone, kWarp, kBlock, kDone };

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;  // uninitialised: a block's 256 stacks are allocated anew for each block
  Wait wait = Wait::kNone;
};

constexpr size_t kStackBytes = 64 * 1024;

struct Block {
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  int current = 0;
  std::function<void()> body;
  std::vector<unsigned> slots;  // a shuffle's values, by thread
  int block_or = 0, released_or = 0;
};

inline Block* block = nullptr;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "simt_host: %s\n", what);
  std::abort();
}

// The running fiber waits at a barrier of this kind, until the scheduler releases it.
inline void wait(Wait kind) {
  Fiber& f = block->fibers[block->current];
  f.wait = kind;
  swapcontext(&f.context, &block->scheduler);
}

inline void fiber_main() {
  block->body();
  wait(Wait::kDone);
}

inline int warp_of(int thread) { return thread / 32; }

// Runs body() as every thread of one block, to the end.
inline void run_block(const std::function<void()>& body, int threads) {
  Block b;
  b.body = body;
  b.fibers.resize(threads);
  b.slots.assign(threads, 0);
  block = &b;
  for (Fiber& f : b.fibers) {
    f.stack.reset(new char[kStackBytes]);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
  }
  for (;;) {
    for (int i = 0; i < threads; ++i) {
      const int t = reverse_order ? threads - 1 - i : i;
      if (b.fibers[t].wait != Wait::kNone) continue;
      b.current = t;
      threadIdx = uint3{static_cast<unsigned>(t % blockDim.x), static_cast<unsigned>(t / blockDim.x % blockDim.y),
                        static_cast<unsigned>(t / (blockDim.x * blockDim.y))};
      swapcontext(&b.scheduler, &b.fibers[t].context);
    }
    // Every fiber now waits or is done: release what can be released.
    bool all_done = true, at_block = true, released = false;
    for (const Fiber& f : b.fibers) {
      all_done &= f.wait == Wait::kDone;
      at_block &= f.wait == Wait::kDone || f.wait == Wait::kBlock;
    }
    if (all_done) break;
    if (at_block) {
      b.released_or = b.block_or;
      b.block_or = 0;
      for (Fiber& f : b.fibers) {
        if (f.wait == Wait::kBlock) f.wait = Wait::kNone, released = true;
      }
    }
    for (int w = 0; w * 32 < threads; ++w) {
      bool warp_waits = true, any = false;
      for (int t = w * 32; t < std::min(threads, w * 32 + 32); ++t) {
        warp_waits &= b.fibers[t].wait == Wait::kWarp || b.fibers[t].wait == Wait::kDone;
        any |= b.fibers[t].wait == Wait::kWarp;
      }
      if (!warp_waits || !any) continue;
      for (int t = w * 32; t < std::min(threads, w * 32 + 32); ++t) {
        if (b.fibers[t].wait == Wait::kWarp) b.fibers[t].wait = Wait::kNone, released = true;
      }
    }
    if (!released) fail("a barrier no thread can pass: threads of a block or a warp wait at different ones");
  }
  block = nullptr;
}

// A launch: every block of the grid in turn, when called with the kernel's arguments.
template <typename... Params>
struct Call {
  dim3 grid, threads;
  void (*kernel)(Params...);
  template <typename... Args>
  void operator()(Args&&... args) const {
    gridDim = grid;
    blockDim = threads;
    const int count = static_cast<int>(threads.x * threads.y * threads.z);
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = uint3{x, y, z};
          run_block([&] { kernel(static_cast<Params>(args)...); }, count);
        }
      }
    }
  }
};

template <typename... Params>
Call<Params...> launch(dim3 grid, dim3 threads, void (*kernel)(Params...)) {
  return {grid, threads, kernel};
}

}  // namespace ember::host

#define EMBER_LAUNCH(grid, block, stream, ...) ::ember::host::launch(dim3(grid), dim3(block), &__VA_ARGS__)

// The device intrinsics the kernels use (CUDA's headers define the first two as attributes for a host compiler).
#undef __global__
#define __global__
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)

inline void __syncthreads() { ember::host::wait(ember::host::Wait::kBlock); }
inline int __syncthreads_or(int v) {
  ember::host::block->block_or |= v != 0;
  ember::host::wait(ember::host::Wait::kBlock);
  return ember::host::block->released_or;
}
inline unsigned shuffle_xor(unsigned v, int offset) {
  ember::host::Block& b = *ember::host::block;
  b.slots[b.current] = v;
  ember::host::wait(ember::host::Wait::kWarp);
  const unsigned got = b.slots[b.current ^ offset];
  ember::host::wait(ember::host::Wait::kWarp);
  return got;
}
inline float __shfl_xor_sync(unsigned, float v, int offset) {
  unsigned bits;
  std::memcpy(&bits, &v, 4);
  bits = shuffle_xor(bits, offset);
  std::memcpy(&v, &bits, 4);
  return v;
}
inline float __uint_as_float(unsigned v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline float rsqrtf(float v) { return 1.0f / std::sqrt(v); }
inline float __expf(float v) { return std::exp(v); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int __float2int_rn(float v) { return static_cast<int>(std::nearbyint(v)); }  // the default mode: ties to even
// The sum of a's and b's 4 signed bytes' products, plus c.
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) {
    c += static_cast<signed char>(a >> (8 * i)) * static_cast<signed char>(b >> (8 * i));
  }
  return c;
}

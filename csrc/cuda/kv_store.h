// Where the rotary kernel also stores the tokens' rotated k and their v: the paged caches as flat slots (block *
// block_size + offset), for rotary_cache. Built-in types only, as quant_args.h, for the glue, the launchers and NVRTC.
#pragma once

namespace ember::cuda {

struct KVStore {
  const void* v;         // [tokens, kv_heads, hd], token rows v_ld apart
  long long v_ld;
  void* k_cache;         // [capacity, kv_heads, hd]; null: rotation only (the rotary op)
  void* v_cache;         // [capacity, kv_heads, hd]
  const long long* slots;  // [n]: the first n tokens' slots (the rest are padding)
  long long n, capacity;
};

}  // namespace ember::cuda

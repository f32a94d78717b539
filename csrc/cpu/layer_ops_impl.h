// The decoder layer's small ops for one instruction set, fused: RMSNorm (with the residual add before it), rotary
// embedding applied in place, and SiLU(gate) * up. Included once per ISA by layer_ops.cpp like the other kernels.
//
// At batch 1 these are a few thousand values each and cost almost nothing to compute; what they cost in torch is
// the ops themselves: RMSNorm is 7 tensor ops, rotary 8 per tensor, each a dispatch and an allocation, about 30
// per layer in all. Each here is one call. Arithmetic is in float32 and each result is rounded to the storage
// type once (torch's reference rounds bfloat16 after every op, so the two differ by bfloat16 ulps there).

#include "vec_impl.h"

// x [rows, dim] (rows `ld` apart) normalized into out (contiguous), times weight.
template <typename T>
void rms_norm_rows(T* out, const T* x, int64_t ld, const T* weight, int64_t rows, int64_t dim, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * ld;
      T* o = out + r * dim;
      vec acc = {};
      int64_t i = 0;
      for (; i + kLanes <= dim; i += kLanes) {
        const vec v = load_vec(xr + i);
        acc += v * v;
      }
      float ss = hsum(acc);
      for (; i < dim; ++i) ss += load(xr, i) * load(xr, i);
      const float inv = 1.0f / std::sqrt(ss / static_cast<float>(dim) + eps);
      // As the reference: the normalized value is rounded to T before the weight multiplies it.
      for (i = 0; i + kLanes <= dim; i += kLanes) {
        T h[kLanes];
        store_vec(h, load_vec(xr + i) * inv);
        store_vec(o + i, load_vec(h) * load_vec(weight + i));
      }
      for (; i < dim; ++i) {
        T h;
        store(&h, 0, load(xr, i) * inv);
        store(o, i, load(&h, 0) * load(weight, i));
      }
    }
  });
}

// residual += x, then x = rms_norm(residual) (both [rows, dim], contiguous).
template <typename T>
void add_rms_norm(T* x, T* residual, const T* weight, int64_t rows, int64_t dim, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* res = residual + r * dim;
      const T* xr = x + r * dim;
      int64_t i = 0;
      for (; i + kLanes <= dim; i += kLanes) store_vec(res + i, load_vec(xr + i) + load_vec(res + i));
      for (; i < dim; ++i) store(res, i, load(xr, i) + load(res, i));
    }
  });
  rms_norm_rows(x, residual, dim, weight, rows, dim, eps);
}

// x[t, h] rotated by position positions[t]: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) on the two halves
// (Hugging Face's rotate_half layout). x rows are `ld` apart, heads contiguous within a row; cos/sin [P, hd].
template <typename T>
void rotary(T* x, int64_t ld, int64_t tokens, int64_t heads, int64_t hd, const T* cos, const T* sin,
            const int64_t* positions) {
  const int64_t half = hd / 2;
  at::parallel_for(0, tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* c = cos + positions[t] * hd;
      const T* s = sin + positions[t] * hd;
      for (int64_t h = 0; h < heads; ++h) {
        T* v = x + t * ld + h * hd;
        for (int64_t i = 0; i < half; ++i) {
          const float a = load(v, i), b = load(v, i + half);
          store(v, i, a * load(c, i) - b * load(s, i));
          store(v, i + half, b * load(c, i + half) + a * load(s, i + half));
        }
      }
    }
  });
}

// x sigmoid(x), the sigmoid from e^-|x| <= 1 (never overflows); for one float or a vector of them.
template <typename V>
inline V silu(V x) {
  const V e = exp_nonpositive(x > 0 ? -x : x);
  return x * (x > 0 ? 1.0f / (1.0f + e) : e / (1.0f + e));
}

// out[r] = silu(gate_up[r, :inner]) * gate_up[r, inner:].
template <typename T>
void silu_mul(T* out, const T* gate_up, int64_t rows, int64_t inner) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* g = gate_up + r * 2 * inner;
      const T* u = g + inner;
      T* o = out + r * inner;
      int64_t i = 0;
      for (; i + kLanes <= inner; i += kLanes) {
        T sx[kLanes];
        store_vec(sx, silu(load_vec(g + i)));  // the reference rounds silu(gate) to T before the product
        store_vec(o + i, load_vec(sx) * load_vec(u + i));
      }
      for (; i < inner; ++i) {
        T sx;
        store(&sx, 0, silu(load(g, i)));
        store(o, i, load(&sx, 0) * load(u, i));
      }
    }
  });
}

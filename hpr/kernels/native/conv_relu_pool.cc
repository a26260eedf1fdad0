// The LRCN's conv blocks on CPU, conv ('same', stride 1) + bias + ReLU +
// max pool (window = stride, 'valid'), as three XLA FFI handlers: the
// forward pass (pooled output and the bit mask of each window's maxima, as
// hpr/kernels/conv_block.py defines them), the kernel's gradient from the
// mask and the pooled gradient (for any number of input channels), and the
// whole backward pass, input's and kernel's gradients, for a multiple of 16
// input channels. hpr/kernels/native_block.py calls them; setup.py builds
// this file into hpr/kernels/_conv_relu_pool*.so.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ffi_util.h"

namespace ffi = xla::ffi;
using hpr::I16;
using hpr::kLanes;
using hpr::Load;
using hpr::ParallelFor;
using hpr::Store;
using hpr::V16;

namespace {

struct Shape {
  int64_t n, h, w, c, f, kh, kw, pool, pad_top, pad_left;
  int64_t ph() const { return h + kh - 1; }
  int64_t pw() const { return w + kw - 1; }
  int64_t oh() const { return h / pool; }
  int64_t ow() const { return w / pool; }
  int64_t k() const { return kh * kw * c; }
};

// One image, zero-padded for a 'same' conv: (ph, pw, c).
void Pad(const Shape& s, const float* x, float* xp) {
  std::fill(xp, xp + s.ph() * s.pw() * s.c, 0.0f);
  for (int64_t r = 0; r < s.h; ++r) {
    std::memcpy(xp + ((r + s.pad_top) * s.pw() + s.pad_left) * s.c,
                x + r * s.w * s.c, sizeof(float) * s.w * s.c);
  }
}

// The P x P window (i, j) of 16 channels starting at f0: acc[t] for window
// pixel t = a P + b is the conv's output there, summed over (dy, dx, c) in
// that order.
template <int P>
inline void Window(const Shape& s, const float* xp, const float* kernel,
                   int64_t i, int64_t j, int64_t f0, V16* acc) {
  for (int t = 0; t < P * P; ++t) acc[t] = V16{};
  const int64_t row_len = s.pw() * s.c, taps = s.kw * s.c;
  const float* base = xp + (i * P * s.pw() + j * P) * s.c;
  for (int64_t dy = 0; dy < s.kh; ++dy) {
    for (int64_t e = 0; e < taps; ++e) {
      const V16 w = Load(kernel + (dy * taps + e) * s.f + f0);
      const float* x0 = base + dy * row_len + e;
      for (int a = 0; a < P; ++a)
        for (int b = 0; b < P; ++b)
          acc[a * P + b] += x0[a * row_len + b * s.c] * w;
    }
  }
}

template <int P>
HPR_CLONES
void Forward(const Shape& s, int64_t begin, int64_t end, const float* x,
             const float* kernel, const float* bias, float* out,
             int32_t* mask) {
  std::vector<float> xp(s.ph() * s.pw() * s.c);
  V16 acc[P * P];
  for (int64_t n = begin; n < end; ++n) {
    Pad(s, x + n * s.h * s.w * s.c, xp.data());
    for (int64_t i = 0; i < s.oh(); ++i) {
      for (int64_t j = 0; j < s.ow(); ++j) {
        const int64_t o = ((n * s.oh() + i) * s.ow() + j) * s.f;
        for (int64_t f0 = 0; f0 < s.f; f0 += kLanes) {
          Window<P>(s, xp.data(), kernel, i, j, f0, acc);
          V16 peak = acc[0];
          for (int t = 1; t < P * P; ++t)
            peak = peak > acc[t] ? peak : acc[t];
          const V16 b = Load(bias + f0);
          peak += b;
          I16 bits = I16{};
          for (int t = 0; t < P * P; ++t)
            bits |= (acc[t] + b == peak) & (1 << t);
          bits &= peak > 0.0f;
          Store(out + o + f0, peak > 0.0f ? peak : V16{});
          std::memcpy(mask + o + f0, &bits, sizeof(bits));
        }
      }
    }
  }
}

template <int P>
HPR_CLONES
void KernelGrad(const Shape& s, int64_t begin, int64_t end, const float* x,
                const int32_t* mask, const float* g, double* total) {
  const int64_t k_n = s.k(), row_len = s.pw() * s.c, taps = s.kw * s.c;
  std::vector<float> xp(s.ph() * s.pw() * s.c), part(k_n * s.f);
  V16 dy[P * P];
  for (int64_t n = begin; n < end; ++n) {
    Pad(s, x + n * s.h * s.w * s.c, xp.data());
    std::fill(part.begin(), part.end(), 0.0f);
    for (int64_t i = 0; i < s.oh(); ++i) {
      for (int64_t j = 0; j < s.ow(); ++j) {
        const int64_t o = ((n * s.oh() + i) * s.ow() + j) * s.f;
        const float* base = xp.data() + (i * P * s.pw() + j * P) * s.c;
        for (int64_t f0 = 0; f0 < s.f; f0 += kLanes) {
          I16 m;
          std::memcpy(&m, mask + o + f0, sizeof(m));
          // Each window's pooled gradient, split evenly between its maxima.
          V16 share = Load(g + o + f0);
          for (int l = 0; l < kLanes; ++l)
            share[l] /= static_cast<float>(std::max(__builtin_popcount(m[l]), 1));
          for (int t = 0; t < P * P; ++t)
            dy[t] = ((m >> t) & 1) != 0 ? share : V16{};
          for (int64_t d = 0; d < s.kh; ++d) {
            for (int64_t e = 0; e < taps; ++e) {
              const float* x0 = base + d * row_len + e;
              V16 sum[2] = {V16{}, V16{}};
              for (int a = 0; a < P; ++a)
                for (int b = 0; b < P; ++b)
                  sum[b & 1] += x0[a * row_len + b * s.c] * dy[a * P + b];
              float* w = part.data() + (d * taps + e) * s.f + f0;
              Store(w, Load(w) + (sum[0] + sum[1]));
            }
          }
        }
      }
    }
    for (int64_t e = 0; e < k_n * s.f; ++e) total[e] += part[e];
  }
}

// The gradients of a block whose input has a multiple of 16 channels, from
// the mask and the pooled gradient g: the input's (dx, like x) and the
// kernel's, summed over images begin..end in float32 and added to total,
// laid out (kh, kw, F, C).
// Only a window's maxima carry gradient, so each (window, output channel)
// adds its share times the kernel (to dx) and times the input patch (to the
// kernel's gradient) at the few pixels its mask names, 16 input channels at
// a time; wt is the kernel as (kh, kw, F, C).
template <int P>
HPR_CLONES
void Backward(const Shape& s, int64_t begin, int64_t end, const float* x,
              const float* wt, const int32_t* mask, const float* g, float* dx,
              double* total) {
  const int64_t k_n = s.k(), pw = s.pw(), c = s.c, f_n = s.f;
  std::vector<float> xp(s.ph() * pw * c), dxp(s.ph() * pw * c),
      part(k_n * f_n);
  for (int64_t n = begin; n < end; ++n) {
    Pad(s, x + n * s.h * s.w * c, xp.data());
    std::fill(dxp.begin(), dxp.end(), 0.0f);
    for (int64_t i = 0; i < s.oh(); ++i) {
      for (int64_t j = 0; j < s.ow(); ++j) {
        const int64_t o = ((n * s.oh() + i) * s.ow() + j) * f_n;
        for (int64_t f = 0; f < f_n; ++f) {
          const uint32_t bits = static_cast<uint32_t>(mask[o + f]);
          if (bits == 0) continue;
          // The window's pooled gradient, split evenly between its maxima.
          const float share =
              g[o + f] / static_cast<float>(__builtin_popcount(bits));
          for (int t = 0; t < P * P; ++t) {
            if (((bits >> t) & 1) == 0) continue;
            // The conv output at (y, x0) reads padded pixels (y + d, x0 + e).
            const int64_t y = i * P + t / P, x0 = j * P + t % P;
            for (int64_t d = 0; d < s.kh; ++d) {
              for (int64_t e = 0; e < s.kw; ++e) {
                const int64_t px = ((y + d) * pw + x0 + e) * c;
                const int64_t kx = ((d * s.kw + e) * f_n + f) * c;
                for (int64_t c0 = 0; c0 < c; c0 += kLanes) {
                  Store(part.data() + kx + c0,
                        Load(part.data() + kx + c0) +
                            share * Load(xp.data() + px + c0));
                  Store(dxp.data() + px + c0,
                        Load(dxp.data() + px + c0) +
                            share * Load(wt + kx + c0));
                }
              }
            }
          }
        }
      }
    }
    float* out = dx + n * s.h * s.w * c;
    for (int64_t r = 0; r < s.h; ++r) {
      std::memcpy(out + r * s.w * c,
                  dxp.data() + ((r + s.pad_top) * pw + s.pad_left) * c,
                  sizeof(float) * s.w * c);
    }
  }
  for (int64_t e = 0; e < k_n * f_n; ++e) total[e] += part[e];
}

// Images go to the threads in blocks of this many, a split that does not
// depend on the number of threads, so neither do the kernel gradient's sums.
constexpr int64_t kBlock = 4;

// The backward pass's blocks are larger: its work per image is small
// beside adding up a kernel-sized sum.
constexpr int64_t kBackwardBlock = 16;

int64_t Blocks(const Shape& s, int64_t block = kBlock) {
  return (s.n + block - 1) / block;
}

ffi::Error CheckShape(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& kernel,
                      int64_t pool, int64_t pad_top, int64_t pad_left,
                      Shape* s) {
  auto xd = x.dimensions();
  auto kd = kernel.dimensions();
  if (xd.size() != 4 || kd.size() != 4 || kd[2] != xd[3])
    return ffi::Error::InvalidArgument("conv_relu_pool: bad operand shapes");
  if (pool < 2 || pool > 5)
    return ffi::Error::InvalidArgument("conv_relu_pool: pool not in 2..5");
  if (kd[3] % kLanes)
    return ffi::Error::InvalidArgument(
        "conv_relu_pool: features not a multiple of 16");
  *s = {xd[0], xd[1], xd[2], xd[3], kd[3], kd[0], kd[1], pool, pad_top,
        pad_left};
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> kernel,
                       ffi::Buffer<ffi::F32> bias,
                       ffi::ResultBuffer<ffi::F32> out,
                       ffi::ResultBuffer<ffi::S32> mask, int64_t pool_size,
                       int64_t pad_top, int64_t pad_left) {
  Shape s;
  if (auto e = CheckShape(x, kernel, pool_size, pad_top, pad_left, &s);
      e.failure())
    return e;
  auto run = s.pool == 2 ? Forward<2> : s.pool == 3 ? Forward<3>
             : s.pool == 4 ? Forward<4> : Forward<5>;
  ParallelFor(pool, Blocks(s), [&, run](int64_t b) {
    run(s, b * kBlock, std::min(s.n, (b + 1) * kBlock), x.typed_data(),
        kernel.typed_data(), bias.typed_data(), out->typed_data(),
        mask->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error KernelGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> kernel,
                          ffi::Buffer<ffi::S32> mask,
                          ffi::Buffer<ffi::F32> g,
                          ffi::ResultBuffer<ffi::F32> dkernel,
                          int64_t pool_size, int64_t pad_top,
                          int64_t pad_left) {
  Shape s;
  if (auto e = CheckShape(x, kernel, pool_size, pad_top, pad_left, &s);
      e.failure())
    return e;
  auto run = s.pool == 2 ? KernelGrad<2> : s.pool == 3 ? KernelGrad<3>
             : s.pool == 4 ? KernelGrad<4> : KernelGrad<5>;
  const int64_t size = s.k() * s.f, blocks = Blocks(s);
  // One sum per block, in float64, added up in block order.
  std::vector<double> sums(blocks * size, 0.0);
  ParallelFor(pool, blocks, [&, run](int64_t b) {
    run(s, b * kBlock, std::min(s.n, (b + 1) * kBlock), x.typed_data(),
        mask.typed_data(), g.typed_data(), sums.data() + b * size);
  });
  float* out = dkernel->typed_data();
  for (int64_t e = 0; e < size; ++e) {
    double total = 0.0;
    for (int64_t b = 0; b < blocks; ++b) total += sums[b * size + e];
    out[e] = static_cast<float>(total);
  }
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::Buffer<ffi::F32> kernel,
                        ffi::Buffer<ffi::S32> mask, ffi::Buffer<ffi::F32> g,
                        ffi::ResultBuffer<ffi::F32> dx,
                        ffi::ResultBuffer<ffi::F32> dkernel,
                        int64_t pool_size, int64_t pad_top, int64_t pad_left) {
  Shape s;
  if (auto e = CheckShape(x, kernel, pool_size, pad_top, pad_left, &s);
      e.failure())
    return e;
  if (s.c % kLanes)
    return ffi::Error::InvalidArgument(
        "conv_relu_pool backward: input channels not a multiple of 16");
  auto run = s.pool == 2 ? Backward<2> : s.pool == 3 ? Backward<3>
             : s.pool == 4 ? Backward<4> : Backward<5>;
  const int64_t taps = s.kh * s.kw, size = s.k() * s.f,
                blocks = Blocks(s, kBackwardBlock);
  // The kernel as (kh, kw, F, C), each output channel's taps contiguous.
  const float* w = kernel.typed_data();
  std::vector<float> wt(size);
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t c = 0; c < s.c; ++c)
      for (int64_t f = 0; f < s.f; ++f)
        wt[(t * s.f + f) * s.c + c] = w[(t * s.c + c) * s.f + f];
  // One kernel-gradient sum per block, in float64, added up in block order.
  std::vector<double> sums(blocks * size, 0.0);
  ParallelFor(pool, blocks, [&, run](int64_t b) {
    run(s, b * kBackwardBlock, std::min(s.n, (b + 1) * kBackwardBlock),
        x.typed_data(), wt.data(), mask.typed_data(), g.typed_data(), dx->typed_data(),
        sums.data() + b * size);
  });
  for (int64_t b = 1; b < blocks; ++b)
    for (int64_t e = 0; e < size; ++e) sums[e] += sums[b * size + e];
  float* out = dkernel->typed_data();
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t c = 0; c < s.c; ++c)
      for (int64_t f = 0; f < s.f; ++f)
        out[(t * s.c + c) * s.f + f] =
            static_cast<float>(sums[(t * s.f + f) * s.c + c]);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HprConvReluPoolForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("pool")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HprConvReluPoolKernelGrad, KernelGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pool")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HprConvReluPoolBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pool")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));

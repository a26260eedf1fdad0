// A whole ConvLSTM layer on CPU (Keras ConvLSTM2D: stride 1, 'valid' or
// 'same' input padding, 'same' recurrent padding, tanh activation, Keras
// 2's hard sigmoid gates, recurrent dropout as a fixed mask on h), as two
// XLA FFI handlers: the forward pass over all time steps, and the backward
// pass through time from its residuals. hpr/kernels/native_convlstm.py calls
// them; setup.py builds this file into hpr/kernels/_conv_lstm*.so.
//
// Shapes (time-major): x (T, N, H, W, C), kernel (kh, kw, C, G), recurrent
// kernel (kh, kw, F, G), bias (G), mask (N, H', W', F), G = 4 F gates in
// Keras' order i, f, c, o. Each clip runs all its steps on one thread, so
// a step's gates, state and gradients stay in cache; clips go to XLA's
// intra-op threads. The 4F gates of a pixel are G / 16 vectors.

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

typedef float V8 __attribute__((vector_size(32)));
typedef float V4 __attribute__((vector_size(16)));

// Helpers are inlined into the multi-versioned kernels, so that they are
// compiled for the same targets.
#define HPR_INLINE inline __attribute__((always_inline))

struct Dims {
  int64_t t, n, h, w, c, f, kh, kw, oh, ow, pad_top, pad_left, hpad_top,
      hpad_left;
  int64_t g() const { return 4 * f; }
  // The padded grid both convolutions read: (oh + kh - 1, ow + kw - 1).
  int64_t ph() const { return oh + kh - 1; }
  int64_t pw() const { return ow + kw - 1; }
  // The output gradient padded by kh - 1, kw - 1 on every side.
  int64_t dph() const { return oh + 2 * (kh - 1); }
  int64_t dpw() const { return ow + 2 * (kw - 1); }
  int64_t frame() const { return h * w * c; }
  int64_t state() const { return oh * ow * f; }
};

// tanh as Eigen's rational approximation, for a float or
// 16 of them: clamped to +-7.9, x for |x| < 4e-4.
template <typename T>
HPR_INLINE T Tanh(T x) {
  const float clamp = 7.90531110763549805f;
  T y = x > clamp ? clamp : x;
  y = y < -clamp ? -clamp : y;
  const T y2 = y * y;
  T p = y2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = y2 * p + -8.60467152213735e-11f;
  p = y2 * p + 5.12229709037114e-08f;
  p = y2 * p + 1.48572235717979e-05f;
  p = y2 * p + 6.37261928875436e-04f;
  p = y2 * p + 4.89352455891786e-03f;
  p = y * p;
  T q = y2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = y2 * q + 2.26843463243900e-03f;
  q = y2 * q + 4.89352518554385e-03f;
  const T ax = x < 0.0f ? -x : x;
  return ax < 0.0004f ? x : p / q;
}

// Keras 2's hard sigmoid, clip(0.2 x + 0.5, 0, 1), and its slope from its
// value: 0.2 inside (0, 1).
template <typename T>
HPR_INLINE T HardSigmoid(T x) {
  T y = 0.2f * x + 0.5f;
  y = y > 1.0f ? 1.0f : y;
  return y < 0.0f ? 0.0f : y;
}

template <typename T>
HPR_INLINE T HardSigmoidSlope(T a) {
  return a > 0.0f && a < 1.0f ? 0.2f : 0.0f;
}

HPR_INLINE V16 HardSigmoidSlopeV(V16 a) {
  return (a > 0.0f) & (a < 1.0f) ? V16{} + 0.2f : V16{};
}

HPR_INLINE float Sum(V16 v) {
  V8 lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo),
              sizeof(hi));
  const V8 s8 = lo + hi;
  V4 a, b;
  std::memcpy(&a, &s8, sizeof(a));
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + sizeof(a), sizeof(b));
  const V4 s4 = a + b;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// One frame into the padded grid (ph, pw, ch) at (top, left); scale, when
// given, multiplies it elementwise (the recurrent dropout mask).
HPR_INLINE void Pad(const Dims& d, const float* in, int64_t height, int64_t width,
         int64_t ch, int64_t top, int64_t left, const float* scale,
         float* out) {
  for (int64_t r = 0; r < height; ++r) {
    float* o = out + ((r + top) * d.pw() + left) * ch;
    const float* i = in + r * width * ch;
    if (scale == nullptr) {
      std::memcpy(o, i, sizeof(float) * width * ch);
    } else {
      const float* m = scale + r * width * ch;
      for (int64_t e = 0; e < width * ch; ++e) o[e] = i[e] * m[e];
    }
  }
}

// acc[p][v] += the convolution at PB neighbouring output pixels of a row,
// the first one's window starting at base in a grid of ch channels with
// rows of row_len floats; taps = kw * ch per kernel row. PB pixels at once
// are PB * NV independent sums (one would wait on each FMA's latency).
template <int NV, int PB>
HPR_INLINE void Conv(const float* base, int64_t ch, int64_t row_len,
                     int64_t kh, int64_t taps, const float* kernel, int64_t g,
                     V16 (*acc)[NV]) {
  for (int64_t dy = 0; dy < kh; ++dy) {
    const float* x0 = base + dy * row_len;
    const float* k0 = kernel + dy * taps * g;
    for (int64_t e = 0; e < taps; ++e) {
      for (int v = 0; v < NV; ++v) {
        const V16 w = Load(k0 + e * g + v * kLanes);
        for (int p = 0; p < PB; ++p) acc[p][v] += x0[p * ch + e] * w;
      }
    }
  }
}

// The gates of PB pixels from j on: bias, both convolutions, activations,
// into the row's gate-major (4, ow, f) activated gates.
template <int NV, int PB>
HPR_INLINE void Gates(const Dims& d, bool recurrent, const float* xp,
                      const float* hp, const float* kernel,
                      const float* rkernel, const V16* b, const I16* is_tanh,
                      int64_t i, int64_t j, float* gate) {
  const int64_t g = d.g(), f = d.f, row = d.ow * f;
  V16 acc[PB][NV];
  for (int p = 0; p < PB; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = b[v];
  Conv<NV, PB>(xp + (i * d.pw() + j) * d.c, d.c, d.pw() * d.c, d.kh,
               d.kw * d.c, kernel, g, acc);
  if (recurrent)
    Conv<NV, PB>(hp + (i * d.pw() + j) * f, f, d.pw() * f, d.kh, d.kw * f,
                 rkernel, g, acc);
  alignas(64) float z[NV * kLanes];
  for (int p = 0; p < PB; ++p) {
    for (int v = 0; v < NV; ++v)
      Store(z + v * kLanes,
            is_tanh[v] != 0 ? Tanh(acc[p][v]) : HardSigmoid(acc[p][v]));
    for (int k = 0; k < 4; ++k)
      std::memcpy(gate + k * row + (j + p) * f, z + k * f, sizeof(float) * f);
  }
}

template <int NV>
HPR_CLONES void Forward(const Dims& d, int64_t n, const float* x,
                        const float* kernel, const float* rkernel,
                        const float* bias, const float* mask, float* hseq,
                        float* cseq, float* gates) {
  const int64_t g = d.g(), f = d.f, ow = d.ow, row = ow * f;
  std::vector<float> xp(d.ph() * d.pw() * d.c, 0.0f),
      hp(d.ph() * d.pw() * f, 0.0f), c(d.state(), 0.0f);
  // Which of a pixel's gate lanes take tanh (the cell input, c).
  I16 is_tanh[NV];
  for (int v = 0; v < NV; ++v)
    for (int l = 0; l < kLanes; ++l) {
      const int64_t lane = v * kLanes + l;
      is_tanh[v][l] = lane >= 2 * f && lane < 3 * f ? -1 : 0;
    }
  V16 b[NV];
  for (int v = 0; v < NV; ++v) b[v] = Load(bias + v * kLanes);
  constexpr int kPixels = 4;
  for (int64_t t = 0; t < d.t; ++t) {
    Pad(d, x + (t * d.n + n) * d.frame(), d.h, d.w, d.c, d.pad_top,
        d.pad_left, nullptr, xp.data());
    if (t > 0)
      Pad(d, hseq + ((t - 1) * d.n + n) * d.state(), d.oh, d.ow, f,
          d.hpad_top, d.hpad_left, mask + n * d.state(), hp.data());
    const int64_t step = t * d.n + n;
    for (int64_t i = 0; i < d.oh; ++i) {
      // This row's activated gates, gate-major: (4, ow, f).
      float* gate = gates + (step * d.oh + i) * 4 * row;
      int64_t j = 0;
      for (; j + kPixels <= ow; j += kPixels)
        Gates<NV, kPixels>(d, t > 0, xp.data(), hp.data(), kernel, rkernel, b,
                           is_tanh, i, j, gate);
      for (; j < ow; ++j)
        Gates<NV, 1>(d, t > 0, xp.data(), hp.data(), kernel, rkernel, b,
                     is_tanh, i, j, gate);
      // c' = f c + i act(.), h' = o tanh(c'), on the row.
      float* cr = c.data() + i * row;
      float* co = cseq + (step * d.oh + i) * row;
      float* ho = hseq + (step * d.oh + i) * row;
      int64_t e = 0;
      for (; e + kLanes <= row; e += kLanes) {
        const V16 cn = Load(gate + row + e) * Load(cr + e) +
                       Load(gate + e) * Load(gate + 2 * row + e);
        Store(cr + e, cn);
        Store(co + e, cn);
        Store(ho + e, Load(gate + 3 * row + e) * Tanh(cn));
      }
      for (; e < row; ++e) {
        const float cn = gate[row + e] * cr[e] + gate[e] * gate[2 * row + e];
        cr[e] = cn;
        co[e] = cn;
        ho[e] = gate[3 * row + e] * Tanh(cn);
      }
    }
  }
}

// part[(dy, e), :] += sum over output pixels of grid[window + (dy, e)] *
// dz[pixel, :]: a kernel's gradient from the padded grid it convolved (ch
// channels) and the gates' gradient, padded (dph, dpw, g).
template <int NV>
HPR_INLINE void KernelGrad(const Dims& d, const float* grid, int64_t ch,
                       const float* dzp, float* part) {
  const int64_t g = d.g(), taps = d.kw * ch;
  constexpr int kTaps = 4;
  for (int64_t dy = 0; dy < d.kh; ++dy) {
    for (int64_t i = 0; i < d.oh; ++i) {
      const float* x0 = grid + (i + dy) * d.pw() * ch;
      const float* dz0 = dzp + ((i + d.kh - 1) * d.dpw() + d.kw - 1) * g;
      for (int64_t e0 = 0; e0 < taps; e0 += kTaps) {
        const int q_n = static_cast<int>(std::min<int64_t>(kTaps, taps - e0));
        V16 acc[kTaps][NV] = {};
        for (int64_t j = 0; j < d.ow; ++j) {
          V16 dz[NV];
          for (int v = 0; v < NV; ++v) dz[v] = Load(dz0 + j * g + v * kLanes);
          const float* xj = x0 + j * ch + e0;
          for (int q = 0; q < q_n; ++q)
            for (int v = 0; v < NV; ++v) acc[q][v] += xj[q] * dz[v];
        }
        for (int q = 0; q < q_n; ++q) {
          float* p = part + ((dy * taps) + e0 + q) * g;
          for (int v = 0; v < NV; ++v)
            Store(p + v * kLanes, Load(p + v * kLanes) + acc[q][v]);
        }
      }
    }
  }
}

// out[r, s, :ch] = sum over taps (dy, dx) of dz[r + top - dy, s + left - dx]
// . kernel[dy, dx, :, :]: the gradient of an (height, width, ch) input that
// was convolved at (top, left) in the padded grid; times scale if given.
template <int NV>
HPR_INLINE void InputGrad(const Dims& d, const float* dzp, const float* kernel,
                      int64_t height, int64_t width, int64_t ch, int64_t top,
                      int64_t left, const float* scale, float* out) {
  const int64_t g = d.g();
  constexpr int kMaxCh = 64 / NV;
  V16 acc[kMaxCh][NV];
  for (int64_t r = 0; r < height; ++r) {
    for (int64_t s = 0; s < width; ++s) {
      for (int64_t k = 0; k < ch; ++k)
        for (int v = 0; v < NV; ++v) acc[k][v] = V16{};
      for (int64_t dy = 0; dy < d.kh; ++dy) {
        for (int64_t dx = 0; dx < d.kw; ++dx) {
          const float* dz =
              dzp + ((r + top - dy + d.kh - 1) * d.dpw() +
                     (s + left - dx + d.kw - 1)) * g;
          V16 dzv[NV];
          for (int v = 0; v < NV; ++v) dzv[v] = Load(dz + v * kLanes);
          const float* k0 = kernel + (dy * d.kw + dx) * ch * g;
          for (int64_t k = 0; k < ch; ++k)
            for (int v = 0; v < NV; ++v)
              acc[k][v] += dzv[v] * Load(k0 + k * g + v * kLanes);
        }
      }
      float* o = out + (r * width + s) * ch;
      for (int64_t k = 0; k < ch; ++k) {
        V16 sum = acc[k][0];
        for (int v = 1; v < NV; ++v) sum += acc[k][v];
        o[k] = Sum(sum);
      }
      if (scale != nullptr) {
        const float* m = scale + (r * width + s) * ch;
        for (int64_t k = 0; k < ch; ++k) o[k] *= m[k];
      }
    }
  }
}

// One clip's backward pass through time, adding the clip's kernel
// gradients to dk, drk and db (zeros when it starts).
template <int NV>
HPR_CLONES void Backward(const Dims& d, int64_t n, const float* dy,
                         const float* x, const float* kernel,
                         const float* rkernel, const float* mask,
                         const float* hseq, const float* cseq,
                         const float* gates, float* dx, float* dk, float* drk,
                         float* db) {
  const int64_t g = d.g(), f = d.f, ow = d.ow, row = ow * f;
  std::vector<float> xp(d.ph() * d.pw() * d.c, 0.0f),
      hp(d.ph() * d.pw() * f, 0.0f), dh(d.state(), 0.0f),
      dc(d.state(), 0.0f), dzp(d.dph() * d.dpw() * g, 0.0f),
      dzr(4 * row);
  const float* m = mask + n * d.state();
  for (int64_t t = d.t - 1; t >= 0; --t) {
    const int64_t step = t * d.n + n;
    for (int64_t i = 0; i < d.oh; ++i) {
      const float* gate = gates + (step * d.oh + i) * 4 * row;
      const float* ct = cseq + (step * d.oh + i) * row;
      const float* cp =
          t > 0 ? cseq + ((step - d.n) * d.oh + i) * row : nullptr;
      const float* dyr = dy + (step * d.oh + i) * row;
      float* dhr = dh.data() + i * row;
      float* dcr = dc.data() + i * row;
      int64_t e = 0;
      for (; e + kLanes <= row; e += kLanes) {
        const V16 gi = Load(gate + e), gf = Load(gate + row + e),
                  gg = Load(gate + 2 * row + e),
                  go = Load(gate + 3 * row + e);
        const V16 dht = Load(dyr + e) + Load(dhr + e);
        const V16 tc = Tanh(Load(ct + e));
        const V16 dct = Load(dcr + e) + dht * go * (1.0f - tc * tc);
        const V16 c_prev = cp != nullptr ? Load(cp + e) : V16{};
        Store(dcr + e, dct * gf);
        Store(dzr.data() + e, dct * gg * HardSigmoidSlopeV(gi));
        Store(dzr.data() + row + e, dct * c_prev * HardSigmoidSlopeV(gf));
        Store(dzr.data() + 2 * row + e, dct * gi * (1.0f - gg * gg));
        Store(dzr.data() + 3 * row + e, dht * tc * HardSigmoidSlopeV(go));
      }
      for (; e < row; ++e) {
        const float gi = gate[e], gf = gate[row + e], gg = gate[2 * row + e],
                    go = gate[3 * row + e];
        const float dht = dyr[e] + dhr[e];
        const float tc = Tanh(ct[e]);
        const float dct = dcr[e] + dht * go * (1.0f - tc * tc);
        const float c_prev = cp != nullptr ? cp[e] : 0.0f;
        dcr[e] = dct * gf;
        dzr[e] = dct * gg * HardSigmoidSlope(gi);
        dzr[row + e] = dct * c_prev * HardSigmoidSlope(gf);
        dzr[2 * row + e] = dct * gi * (1.0f - gg * gg);
        dzr[3 * row + e] = dht * tc * HardSigmoidSlope(go);
      }
      // Pixel-major into the padded gradient.
      float* dz0 = dzp.data() + ((i + d.kh - 1) * d.dpw() + d.kw - 1) * g;
      for (int64_t j = 0; j < ow; ++j)
        for (int k = 0; k < 4; ++k)
          std::memcpy(dz0 + j * g + k * f, dzr.data() + k * row + j * f,
                      sizeof(float) * f);
    }
    // The bias' gradient.
    V16 sum[NV] = {};
    for (int64_t i = 0; i < d.oh; ++i) {
      const float* dz0 = dzp.data() + ((i + d.kh - 1) * d.dpw() + d.kw - 1) * g;
      for (int64_t j = 0; j < ow; ++j)
        for (int v = 0; v < NV; ++v) sum[v] += Load(dz0 + j * g + v * kLanes);
    }
    for (int v = 0; v < NV; ++v)
      Store(db + v * kLanes, Load(db + v * kLanes) + sum[v]);
    Pad(d, x + step * d.frame(), d.h, d.w, d.c, d.pad_top, d.pad_left,
        nullptr, xp.data());
    KernelGrad<NV>(d, xp.data(), d.c, dzp.data(), dk);
    if (dx != nullptr)
      InputGrad<NV>(d, dzp.data(), kernel, d.h, d.w, d.c, d.pad_top,
                    d.pad_left, nullptr, dx + step * d.frame());
    if (t > 0) {
      Pad(d, hseq + (step - d.n) * d.state(), d.oh, d.ow, f, d.hpad_top,
          d.hpad_left, m, hp.data());
      KernelGrad<NV>(d, hp.data(), f, dzp.data(), drk);
      // h_{t-1}'s gradient through the recurrent convolution and the mask.
      InputGrad<NV>(d, dzp.data(), rkernel, d.oh, d.ow, f, d.hpad_top,
                    d.hpad_left, m, dh.data());
    }
  }
}

ffi::Error GetDims(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& kernel,
                   ffi::Buffer<ffi::F32>& rkernel, ffi::Buffer<ffi::F32>& mask,
                   int64_t pad_top, int64_t pad_left, int64_t hpad_top,
                   int64_t hpad_left, Dims* d) {
  auto xd = x.dimensions();
  auto kd = kernel.dimensions();
  auto rd = rkernel.dimensions();
  auto md = mask.dimensions();
  if (xd.size() != 5 || kd.size() != 4 || rd.size() != 4 || md.size() != 4)
    return ffi::Error::InvalidArgument("conv_lstm: bad operand ranks");
  const int64_t f = md[3], g = 4 * f;
  if (kd[2] != xd[4] || kd[3] != g || rd[2] != f || rd[3] != g ||
      rd[0] != kd[0] || rd[1] != kd[1] || md[0] != xd[1])
    return ffi::Error::InvalidArgument("conv_lstm: operand shapes disagree");
  if (g % kLanes != 0 || g > 4 * kLanes)
    return ffi::Error::InvalidArgument(
        "conv_lstm: 4 * features not 16, 32 or 64");
  *d = {xd[0], xd[1], xd[2], xd[3], xd[4], f, kd[0], kd[1], md[1], md[2],
        pad_top, pad_left, hpad_top, hpad_left};
  if (d->oh + d->kh - 1 < d->h + pad_top || d->ow + d->kw - 1 < d->w + pad_left ||
      hpad_top >= d->kh || hpad_left >= d->kw)
    return ffi::Error::InvalidArgument("conv_lstm: bad paddings");
  if (d->c * (g / kLanes) > 64 || f * (g / kLanes) > 64)
    return ffi::Error::InvalidArgument("conv_lstm: too many channels");
  return ffi::Error::Success();
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> kernel,
                       ffi::Buffer<ffi::F32> rkernel,
                       ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> mask,
                       ffi::ResultBuffer<ffi::F32> hseq,
                       ffi::ResultBuffer<ffi::F32> cseq,
                       ffi::ResultBuffer<ffi::F32> gates, int64_t pad_top,
                       int64_t pad_left, int64_t hpad_top,
                       int64_t hpad_left) {
  Dims d;
  if (auto e = GetDims(x, kernel, rkernel, mask, pad_top, pad_left, hpad_top,
                       hpad_left, &d);
      e.failure())
    return e;
  const int nv = static_cast<int>(d.g() / kLanes);
  auto run = nv == 1 ? Forward<1> : nv == 2 ? Forward<2> : nv == 3
                                                              ? Forward<3>
                                                              : Forward<4>;
  ParallelFor(pool, d.n, [&, run](int64_t n) {
    run(d, n, x.typed_data(), kernel.typed_data(), rkernel.typed_data(),
        bias.typed_data(), mask.typed_data(), hseq->typed_data(),
        cseq->typed_data(), gates->typed_data());
  });
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> x,
    ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> rkernel,
    ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> hseq,
    ffi::Buffer<ffi::F32> cseq, ffi::Buffer<ffi::F32> gates,
    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dkernel,
    ffi::ResultBuffer<ffi::F32> drkernel, ffi::ResultBuffer<ffi::F32> dbias,
    int64_t pad_top, int64_t pad_left, int64_t hpad_top, int64_t hpad_left) {
  Dims d;
  if (auto e = GetDims(x, kernel, rkernel, mask, pad_top, pad_left, hpad_top,
                       hpad_left, &d);
      e.failure())
    return e;
  const int nv = static_cast<int>(d.g() / kLanes);
  auto run = nv == 1 ? Backward<1> : nv == 2 ? Backward<2> : nv == 3
                                                                 ? Backward<3>
                                                                 : Backward<4>;
  // The input's gradient only where its result has the input's size (the
  // caller asks for an empty one when nothing needs it).
  float* dx_data = dx->element_count() == 0 ? nullptr : dx->typed_data();
  if (dx_data != nullptr)
    std::fill(dx_data, dx_data + dx->element_count(), 0.0f);
  const int64_t g = d.g(), nk = d.kh * d.kw * d.c * g,
                nr = d.kh * d.kw * d.f * g;
  // Each clip's own kernel gradients (the caller adds them up).
  float* dk = dkernel->typed_data();
  float* drk = drkernel->typed_data();
  float* db = dbias->typed_data();
  std::fill(dk, dk + d.n * nk, 0.0f);
  std::fill(drk, drk + d.n * nr, 0.0f);
  std::fill(db, db + d.n * g, 0.0f);
  ParallelFor(pool, d.n, [&, run](int64_t n) {
    run(d, n, dy.typed_data(), x.typed_data(), kernel.typed_data(),
        rkernel.typed_data(), mask.typed_data(), hseq.typed_data(),
        cseq.typed_data(), gates.typed_data(), dx_data, dk + n * nk,
        drk + n * nr, db + n * g);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(HprConvLstmForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("hpad_top")
                                  .Attr<int64_t>("hpad_left"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(HprConvLstmBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("hpad_top")
                                  .Attr<int64_t>("hpad_left"));

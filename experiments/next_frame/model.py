"""The ConvLSTM encoder-forecaster of Shi et al. (2015), from hpr's cell.

  x (B, 10, H, W, 1) -> patches (B, 10, H/p, W/p, p*p)
  encoder:    ConvLSTM 1 -> ConvLSTM 2 -> ...  over the 10 input steps
  forecaster: ConvLSTM 1' -> ConvLSTM 2' -> ... 10 steps, no input; layer k'
              starts from the final (c, h) of encoder layer k
  head:       all forecaster layers' h, concatenated -> 1x1 conv -> p*p
              logits per patch -> (B, 10, H, W, 1) per-pixel logits

As in the paper, frames are cut into p x p patches (p = 4 turns a 64x64 frame
into a 16x16x16 tensor) so the recurrent convolutions run on a smaller grid,
and the loss is the per-pixel binary cross-entropy of sigmoid(logits).

hpr's `ConvLSTM` layer runs a whole sequence from a zero state and returns
only h; a forecaster needs each layer's final (c, h) out of the encoder and a
given (c, h) into the forecaster. `ConvLSTMCell` is a Flax `RNNCellBase`, so
`nnx.RNN(cell, return_carry=True)` gives exactly that. It runs unrolled
(`unroll=True`): on XLA:CPU the backward pass of the convolutions inside a
rolled `lax.scan` was about 25 times slower than unrolled (measured on this
cell, 10 steps at batch 16 on a 16x16 grid).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hpr.models import ConvLSTMCell

Array = jax.Array


def space_to_depth(x: Array, p: int) -> Array:
  # x: (..., H, W, C) -> (..., H/p, W/p, p*p*C)
  *lead, h, w, c = x.shape
  x = x.reshape(*lead, h // p, p, w // p, p, c)
  x = jnp.moveaxis(x, -4, -3)  # (..., H/p, W/p, p, p, C)
  return x.reshape(*lead, h // p, w // p, p * p * c)


def depth_to_space(x: Array, p: int) -> Array:
  # x: (..., H/p, W/p, p*p*C) -> (..., H, W, C); inverse of space_to_depth.
  *lead, h, w, d = x.shape
  c = d // (p * p)
  x = x.reshape(*lead, h, w, p, p, c)
  x = jnp.moveaxis(x, -3, -4)  # (..., H/p, p, W/p, p, C)
  return x.reshape(*lead, h * p, w * p, c)


class EncoderForecaster(nnx.Module):
  """Stacked ConvLSTM encoder and forecaster with a 1x1-conv logit head."""

  def __init__(
    self,
    *,
    channels: int = 1,
    patch: int = 4,
    features: Sequence[int] = (64, 64),
    kernel_size: Sequence[int] = (3, 3),
    rngs: nnx.Rngs,
  ):
    """Builds the model.

    Args:
      channels: channels of a frame.
      patch: side p of the square patches a frame is cut into.
      features: output channels of each ConvLSTM layer, bottom first; the
        forecaster mirrors the encoder.
      kernel_size: (kh, kw) of every ConvLSTM convolution.
      rngs: 'params'.
    """
    self.patch = patch
    depth = channels * patch * patch

    def stack(in_features):
      layers = nnx.List()
      for f in features:
        cell = ConvLSTMCell(
          in_features, f, kernel_size, padding='same', rngs=rngs
        )
        layers.append(nnx.RNN(cell, return_carry=True, unroll=True))
        in_features = f
      return layers

    self.encoder = stack(depth)
    # The forecaster's bottom layer has no input: it reads a 1-channel zero
    # frame, so only its state (copied from the encoder) carries information.
    self.forecaster = stack(1)
    self.head = nnx.Conv(sum(features), depth, (1, 1), rngs=rngs)

  def __call__(self, x: Array, num_future: int = 10) -> Array:
    # x: (B, T, H, W, C) in [0, 1] -> logits (B, num_future, H, W, C)
    z = space_to_depth(x, self.patch)
    carries = []
    for rnn in self.encoder:
      carry, z = rnn(z)
      carries.append(carry)
    batch, _, h, w, _ = z.shape
    y = jnp.zeros((batch, num_future, h, w, 1), z.dtype)
    states = []
    for rnn, carry in zip(self.forecaster, carries, strict=True):
      _, y = rnn(y, initial_carry=carry)
      states.append(y)
    logits = self.head(jnp.concatenate(states, axis=-1))
    return depth_to_space(logits, self.patch)

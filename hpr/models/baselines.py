"""Baselines that ignore temporal order."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from hpr.models import layers
from hpr.models.lrcn import FrameCNN

Array = jax.Array


class SingleFrame(nnx.Module):
  """The LRCN paper's single-frame baseline: classify every frame with the
  LRCN frame encoder + Dense, then average the softmax predictions.

  Returns log(mean softmax) so the output is a logits tensor. Frame order
  cannot matter: every frame is classified alone and the mean is symmetric.
  """

  def __init__(
    self,
    num_classes: int,
    *,
    input_shape: Sequence[int] = (20, 64, 64, 3),
    conv_features: Sequence[int] = (16, 32, 64, 64),
    kernel_size: Sequence[int] = (3, 3),
    pool_sizes: Sequence[int] = (4, 4, 2, 2),
    dropout: float = 0.25,
    impl: str = 'auto',
    dtype: str = 'float32',
    rngs: nnx.Rngs,
  ):
    """Builds the model.

    Args:
      num_classes: number of output logits.
      input_shape: (T, H, W, C) of one clip; T may differ at call time.
      conv_features: output channels of each conv block.
      kernel_size: (kh, kw) of every conv.
      pool_sizes: square max-pool window of each conv block.
      dropout: dropout rate after every conv block but the last.
      impl: how the conv blocks run, 'auto' or 'reference' (hpr.kernels).
      dtype: compute dtype, 'float32' or 'bfloat16' (parameters float32).
      rngs: 'params' and 'dropout' streams.
    """
    self.dtype = layers.compute_dtype(dtype)
    self.encoder = FrameCNN(
      input_shape[1:],
      conv_features=conv_features,
      kernel_size=kernel_size,
      pool_sizes=pool_sizes,
      dropout=dropout,
      impl=impl,
      rngs=rngs,
    )
    self.dense = nnx.Linear(
      self.encoder.out_features,
      num_classes,
      kernel_init=layers.glorot_uniform,
      dtype=self.dtype,
      rngs=rngs,
    )

  def __call__(self, x: Array) -> Array:
    # x: (B, T, H, W, C) -> per-frame logits: (B, T, K) -> (B, K)
    logits = self.dense(self.encoder(x.astype(self.dtype)))
    return layers.log_mean_softmax(logits.astype(jnp.float32), axis=1)

  # Streaming (hpr.tools.streaming): frames are classified alone, so a
  # window is a mean of per-frame predictions and there is no state.

  def encode_frames(self, frames: Array) -> Array:
    # frames: (..., H, W, C) -> per-frame log-probabilities: (..., K)
    logits = self.dense(self.encoder(frames.astype(self.dtype)))
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)

  def classify_encoded(self, log_probs: Array) -> Array:
    # log_probs: (B, T, K) -> log(mean softmax): (B, K)
    return jax.nn.logsumexp(log_probs, axis=1) - jnp.log(log_probs.shape[1])

  def initial_state(self, log_probs: Array) -> tuple:
    del log_probs
    return ()

  def stream_step(self, state, log_probs: Array):
    return state, log_probs

  def stream_readout(self, log_probs: Array) -> Array:
    return self.classify_encoded(log_probs)

"""The notebook's ConvLSTM and LRCN in PyTorch, as a PyTorch user writes them.

Inputs are (B, T, C, H, W) float32 clips (PyTorch's channels-first);
outputs are logits (B, 4). The layers, padding, pooling and dropout are the
Keras notebook's, so the FLOPs are `common.analytic_flops()`'s and the
trainable parameters the notebook's (44,524 and 73,060).
"""

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from peers import common


def _hard_sigmoid(x):
  return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


GATES = {'sigmoid': torch.sigmoid, 'hard_sigmoid': _hard_sigmoid}


class ConvLSTMLayer(nn.Module):
  """Keras' ConvLSTM2D (3x3, tanh, return_sequences) with variational
  recurrent dropout. Keras convolves the input VALID and the state SAME:
  one VALID conv over (x, the state padded by 1) is the same sum, with the
  same parameters (Keras' kernel, recurrent kernel and bias).

  The gates' activation is PyTorch's sigmoid (one kernel in eager mode, as
  the earlier anchors had it) unless `gate='hard_sigmoid'`: tf_keras'
  default, clip(0.2 x + 0.5, 0, 1), the notebook's and hpr's seed model's.
  Neither is counted in the FLOPs.
  """

  def __init__(
    self,
    in_channels: int,
    features: int,
    dropout: float = 0.2,
    gate: str = 'sigmoid',
  ):
    super().__init__()
    self.features, self.dropout = features, dropout
    self.gate = GATES[gate]
    self.conv = nn.Conv2d(in_channels + features, 4 * features, 3)

  def forward(self, x):  # x: (B, T, C, H, W) -> (B, T, F, H - 2, W - 2)
    b, t, _, height, width = x.shape
    h = x.new_zeros(b, self.features, height - 2, width - 2)
    c = torch.zeros_like(h)
    mask = None
    if self.training and self.dropout > 0:  # One mask for all steps.
      mask = F.dropout(torch.ones_like(h), self.dropout, True)
    outputs = []
    for i in range(t):
      state = h if mask is None else h * mask
      z = self.conv(torch.cat([x[:, i], F.pad(state, (1, 1, 1, 1))], 1))
      gi, gf, gg, go = torch.split(z, self.features, 1)
      c = self.gate(gf) * c + self.gate(gi) * torch.tanh(gg)
      h = self.gate(go) * torch.tanh(c)
      outputs.append(h)
    return torch.stack(outputs, 1)


class ConvLSTM(nn.Module):
  """4 ConvLSTM layers (4, 8, 14, 16 filters), each followed by a 'same'
  2x2 max pool and (but the last) dropout 0.2; Dense(4) on the flattened
  sequence. `gate`: the gates' activation (ConvLSTMLayer)."""

  def __init__(self, gate: str = 'sigmoid'):
    super().__init__()
    channels = (common.CHANNELS, *common.CONVLSTM_FILTERS)
    self.layers = nn.ModuleList(
      ConvLSTMLayer(a, b, gate=gate) for a, b in itertools.pairwise(channels)
    )
    size = common.SIZE
    for _ in self.layers:
      size = (size - 2 + 1) // 2
    flat = common.FRAMES * size * size * channels[-1]
    self.dense = nn.Linear(flat, common.CLASSES)

  def forward(self, x):  # x: (B, T, C, H, W) -> logits (B, classes)
    for i, layer in enumerate(self.layers):
      x = layer(x)
      b, t = x.shape[:2]
      # ceil_mode: Keras' padding='same' for an odd size.
      x = F.max_pool2d(x.flatten(0, 1), 2, ceil_mode=True)
      x = x.reshape(b, t, *x.shape[1:])
      if i < len(self.layers) - 1:
        x = F.dropout(x, 0.2, self.training)
    return self.dense(x.flatten(1))


class LRCN(nn.Module):
  """Per frame: 4 blocks of 3x3 SAME conv + ReLU + max pool (4, 4, 2, 2)
  with dropout 0.25 after the first three; then LSTM(32) over the frames
  and Dense(4) on its last output."""

  def __init__(self):
    super().__init__()
    channels = (common.CHANNELS, *(f for f, _ in common.LRCN_BLOCKS))
    self.convs = nn.ModuleList(
      nn.Conv2d(a, b, 3, padding=1) for a, b in itertools.pairwise(channels)
    )
    self.pools = tuple(p for _, p in common.LRCN_BLOCKS)
    size = common.SIZE
    for p in self.pools:
      size //= p
    feature = size * size * channels[-1]
    self.lstm = nn.LSTM(feature, common.LRCN_LSTM, batch_first=True)
    # Keras' LSTM has one bias, PyTorch's two (input and recurrent): the
    # recurrent one stays zero and is not trained, so the network and its
    # trainable parameters are Keras'.
    with torch.no_grad():
      self.lstm.bias_hh_l0.zero_()
    self.lstm.bias_hh_l0.requires_grad_(False)
    self.dense = nn.Linear(common.LRCN_LSTM, common.CLASSES)

  def forward(self, x):  # x: (B, T, C, H, W) -> logits (B, classes)
    b, t = x.shape[:2]
    x = x.flatten(0, 1)
    for i, (conv, pool) in enumerate(zip(self.convs, self.pools, strict=True)):
      x = F.max_pool2d(F.relu(conv(x)), pool)
      if i < len(self.convs) - 1:
        x = F.dropout(x, 0.25, self.training)
    out, _ = self.lstm(x.reshape(b, t, -1))
    return self.dense(out[:, -1])


MODELS = {'convlstm': ConvLSTM, 'lrcn': LRCN}


def build(model: str, **kwargs) -> nn.Module:
  """The notebook's `model` ('convlstm' or 'lrcn'); `kwargs` for its
  constructor."""
  return MODELS[model](**kwargs)


def trainable_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters() if p.requires_grad)


def from_keras(net: nn.Module, keras_model) -> None:
  """Copies the weights of `keras_models.build(keras, same model)` into
  `net`, so both compute the same function (a ConvLSTM built with
  gate='hard_sigmoid', tf_keras' gate)."""
  weights = {}
  for layer in keras_model.layers:
    layer = getattr(layer, 'layer', layer)  # Inside TimeDistributed.
    weights.setdefault(type(layer).__name__, []).append(layer.get_weights())

  def put(param, value):
    with torch.no_grad():
      param.copy_(torch.from_numpy(np.ascontiguousarray(value)))

  if isinstance(net, ConvLSTM):
    for layer, (kernel, recurrent, bias) in zip(
      net.layers, weights['ConvLSTM2D'], strict=True
    ):
      # (3, 3, C + F, 4F) HWIO -> OIHW; Keras' gates i, f, c, o are ours.
      both = np.concatenate([kernel, recurrent], 2)
      put(layer.conv.weight, both.transpose(3, 2, 0, 1))
      put(layer.conv.bias, bias)
    ((kernel, bias),) = weights['Dense']
    # Keras flattens (T, H, W, F), PyTorch (T, F, H, W).
    f = common.CONVLSTM_FILTERS[-1]
    size = round((kernel.shape[0] / common.FRAMES / f) ** 0.5)
    kernel = kernel.reshape(common.FRAMES, size, size, f, -1)
    kernel = kernel.transpose(0, 3, 1, 2, 4).reshape(-1, kernel.shape[-1])
  else:
    for conv, (kernel, bias) in zip(net.convs, weights['Conv2D'], strict=True):
      put(conv.weight, kernel.transpose(3, 2, 0, 1))
      put(conv.bias, bias)
    ((kernel_ih, kernel_hh, bias_lstm),) = weights['LSTM']
    put(net.lstm.weight_ih_l0, kernel_ih.T)
    put(net.lstm.weight_hh_l0, kernel_hh.T)
    put(net.lstm.bias_ih_l0, bias_lstm)
    ((kernel, bias),) = weights['Dense']
  put(net.dense.weight, kernel.T)
  put(net.dense.bias, bias)

"""The notebook's ConvLSTM and LRCN in Keras, as the notebook builds them.

`build(keras, model)` takes the Keras module (tf_keras, Keras 2 on
TensorFlow, in the sittings; Keras 3 builds the same networks), so this
file imports no framework itself. Inputs are (B, T, H, W, C) float32 clips,
outputs softmax probabilities (B, 4), trained with categorical
cross-entropy and Adam (Keras' default rate, 1e-3), as in the notebook.
"""

from peers import common


def build(keras, model: str):
  """The notebook's compiled `model` ('convlstm' or 'lrcn')."""
  layers = keras.layers
  shape = (common.FRAMES, common.SIZE, common.SIZE, common.CHANNELS)
  net = [keras.Input(shape=shape)]
  if model == 'convlstm':
    for i, filters in enumerate(common.CONVLSTM_FILTERS):
      net.append(
        layers.ConvLSTM2D(
          filters=filters,
          kernel_size=(3, 3),
          activation='tanh',
          data_format='channels_last',
          recurrent_dropout=0.2,
          return_sequences=True,
        )
      )
      net.append(
        layers.MaxPooling3D(
          pool_size=(1, 2, 2), padding='same', data_format='channels_last'
        )
      )
      if i < len(common.CONVLSTM_FILTERS) - 1:
        net.append(layers.TimeDistributed(layers.Dropout(0.2)))
    net.append(layers.Flatten())
  elif model == 'lrcn':
    for i, (features, pool) in enumerate(common.LRCN_BLOCKS):
      net += [
        layers.TimeDistributed(
          layers.Conv2D(features, (3, 3), padding='same', activation='relu')
        ),
        layers.TimeDistributed(layers.MaxPooling2D((pool, pool))),
      ]
      if i < len(common.LRCN_BLOCKS) - 1:
        net.append(layers.TimeDistributed(layers.Dropout(0.25)))
    net += [
      layers.TimeDistributed(layers.Flatten()),
      layers.LSTM(common.LRCN_LSTM),
    ]
  else:
    raise ValueError(
      f'unknown model {model!r}; expected one of {common.MODELS}'
    )
  net.append(layers.Dense(common.CLASSES, activation='softmax'))
  built = keras.Sequential(net)
  built.compile(
    loss='categorical_crossentropy', optimizer='Adam', metrics=['accuracy']
  )
  return built

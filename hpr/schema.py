"""The config schema: every key hpr understands, its default, its rule and
what it does, in one place.

Study configs start from it (`config = get_config()`, or through
configs/default.py) and change a few keys. `hpr.config.validate` walks a
config against this file: a key must be here, its value of the default's
type and pass the rule written beside the default (`rule(default, check)`;
the checks are in hpr.config). A new key is one line here.

The default experiment is an LRCN on the built-in synthetic_actions dataset:

  python -m hpr.main --config configs/default.py --workdir /tmp/hpr/default

It builds the dataset on first use (under a minute), trains and tests in
under ten minutes on a 2-core CPU; see README.md for the measured time and
accuracy.
"""

import ml_collections

from hpr.config import (
  dataset_name,
  fraction,
  init_from,
  interval,
  items,
  model_name,
  name_pairs,
  non_negative,
  one_of,
  positive,
  rule,
  unwrap_rules,
)
from hpr.errors import ConfigError

# input.modality -> channels of the model's input frames (hpr.video_ops
# .to_modality makes them; hpr.train_state.build_model sizes the model).
MODALITY_CHANNELS = {'rgb': 3, 'diff': 3, 'rgb+diff': 6, 'rgb+flow': 5}


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config (LRCN, synthetic_actions)."""
  return unwrap_rules(_schema())[0]


def rules() -> dict:
  """{key: check} for every key with a rule; `hpr.config.validate` uses it."""
  return unwrap_rules(_schema())[1]


def cross_checks(config: ml_collections.ConfigDict) -> None:
  """Rules that involve several keys.

  Raises:
    ConfigError: one line naming the keys.
  """
  v = config.dataset.video_folder
  if config.dataset.name != 'video_folder':
    return
  num_frames = config.input.num_frames
  if v.min_frames < num_frames:
    raise ConfigError(
      f'dataset.video_folder.min_frames: {v.min_frames} is below '
      f'input.num_frames {num_frames}, so videos shorter than a clip would '
      f'escape short_video={v.short_video!r}; set it to at least {num_frames}'
    )
  if 0 < v.max_frames < v.min_frames:
    raise ConfigError(
      f'dataset.video_folder.max_frames: {v.max_frames} is below min_frames '
      f'{v.min_frames}; every video would be short'
    )


def _schema() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Seeds parameter init, dropout, shuffling and augmentation. The same config
  # and seed give the same numbers, also across a resume.
  config.seed = 0

  config.dataset = d = ml_collections.ConfigDict()
  # TFDS name, optionally with a builder config: 'synthetic_actions/default',
  # 'synthetic_actions/tiny', or any prepared TFDS video dataset.
  d.name = rule('synthetic_actions/default', dataset_name)
  # Where TFDS datasets are prepared and read; '' uses TFDS's default
  # ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  d.data_dir = ''
  # Split names (TFDS split syntax, e.g. 'train[:80%]').
  d.train_split = 'train'
  d.eval_split = 'validation'  # Evaluated after every epoch.
  d.test_split = 'test'  # Evaluated once with the best checkpoint.
  # What a horizontal flip (input.random_flip) does to the labels; a flip
  # turns a clockwise rotation counter-clockwise and "left to right" into
  # "right to left" (docs/data.md, Flips). 'dataset': what the dataset
  # declares (each synthetic_actions builder config has its flip_label_map,
  # e.g. small_video's RotateCW <-> RotateCCW); datasets that declare nothing
  # (video folders, other TFDS datasets) keep every label. 'allowed': a flip
  # keeps every label but those of flip_label_map. 'forbidden': clips of this
  # dataset are never flipped (input.random_flip is then ignored, with a
  # warning).
  d.flip = rule('dataset', one_of('dataset', 'allowed', 'forbidden'))
  # Pairs of class names a flip swaps, e.g. (('Clockwise',
  # 'CounterClockwise'), ('SwipeLeft', 'SwipeRight')) (MMAction2's Flip
  # flip_label_map); classes in no pair keep their label. Given, it replaces
  # the dataset's own declaration.
  d.flip_label_map = rule((), name_pairs)
  # dataset.name = 'video_folder': your own videos, prepared once (README,
  # "Real videos"). Changing any key but num_workers prepares again, into
  # its own directory.
  d.video_folder = v = ml_collections.ConfigDict()
  # The folder of class folders: ROOT/<Class>/<video>.{avi,mp4,mkv,webm,mov}
  # (how UCF50, UCF101 and HMDB51 unpack).
  v.root = ''
  # Class folders to use, in label order; () uses all of them, sorted.
  v.classes = rule((), items(str))
  # Frames are stored with this shorter side (JPEG).
  v.short_side = rule(128, positive)
  # Keep at most this many frames per video, evenly spaced over it; 0 keeps
  # all.
  v.max_frames = rule(0, non_negative)
  # Videos with fewer frames are short: 'loop' plays them again up to
  # min_frames, 'repeat_last' holds the last frame, 'drop' leaves them out
  # (the notebook). min_frames must be at least input.num_frames.
  v.min_frames = rule(20, non_negative)
  v.short_video = rule('loop', one_of('loop', 'repeat_last', 'drop'))
  # 'groups': by UCF group (v_<Class>_g<GG>_c<CC> names): test_groups, or
  # else leave-one-group-out fold `fold`; 'official': the split files in
  # split_dir (UCF101 trainlist0N/testlist0N.txt or HMDB51
  # *_test_splitN.txt, N = split_number); 'stratified': per-class random
  # fractions, for folders without groups; 'random_clips': the notebook's
  # random split of grouped clips, leaky, needs allow_leaky_split.
  v.split = rule(
    'groups', one_of('groups', 'official', 'stratified', 'random_clips')
  )
  # Groups in the test split ('groups'); () uses fold.
  v.test_groups = rule((), items(int))
  # Leave-one-group-out: group `fold` is the test split.
  v.fold = rule(1, positive)
  # Validation is carved from the training groups: the last val_groups of
  # them ('groups'; 'official' where names have groups).
  v.val_groups = rule(2, positive)
  v.split_dir = ''  # Folder of the official split files ('official').
  v.split_number = rule(1, positive)  # Official split 1, 2 or 3.
  # Per-class fractions for 'stratified' and 'random_clips' (and for
  # validation of 'official' splits without groups), seeded by `seed`.
  v.test_fraction = rule(0.25, fraction)
  v.val_fraction = rule(0.1, fraction)
  v.seed = 0
  # A split that puts one actor and scene (UCF group) in train and test
  # overstates test accuracy: any split that would ('random_clips', or
  # 'stratified' over UCF-named videos) is refused unless this is set, and
  # then warns with the number of (class, group) pairs on both sides.
  v.allow_leaky_split = False
  # Worker processes that decode videos while preparing; 0: one per CPU.
  v.num_workers = rule(0, non_negative)

  config.input = i = ml_collections.ConfigDict()
  # Frames per clip. The notebook's SEQUENCE_LENGTH is 20; 10 frames (every
  # 4th of a 40-frame synthetic clip) halve the cost of a step, so the default
  # run trains twice as many epochs in its ten minutes and ends more accurate.
  i.num_frames = rule(10, positive)
  # Frames are resized to image_size x image_size.
  i.image_size = rule(64, positive)
  # How frames are chosen from a video. 'uniform': evenly spaced over the
  # whole video (the notebook); 'strided': num_frames at frame_stride from an
  # offset (random in training, centred in evaluation); 'segments': one frame
  # from each of num_frames equal segments (random in training, the middle
  # in evaluation; TSN).
  i.train_sampling = rule('uniform', one_of('uniform', 'strided', 'segments'))
  i.eval_sampling = rule('uniform', one_of('uniform', 'strided', 'segments'))
  i.frame_stride = rule(2, positive)  # Used by 'strided' sampling.
  # Spatial crop of training clips, one box per clip, then resized to
  # image_size x image_size: 'resize' takes the whole frame (squeezed, the
  # notebook); 'random_resized' a random box of a fraction in crop_area of
  # the frame, aspect ratio (w/h) in crop_aspect; 'scale_jitter' a random
  # square of 1/s of the short side, s in scale_jitter.
  i.train_crop = rule(
    'resize', one_of('resize', 'random_resized', 'scale_jitter')
  )
  i.crop_area = rule((0.4, 1.0), interval(0.0, 1.0))
  i.crop_aspect = rule((0.75, 1.333), interval(0.0, None))
  i.scale_jitter = rule((1.0, 1.33), interval(1.0, None))
  # Evaluation: 'resize' (the notebook) or 'center' (the central square of
  # the short side). eval.num_test_crops = 3 replaces it in the test.
  i.eval_crop = rule('resize', one_of('resize', 'center'))
  i.random_flip = True  # Horizontal flip in training.
  # Random per-clip hue, saturation, contrast and brightness change in
  # training (video_ops.color_jitter); 0 turns it off, 0.5 is strong.
  i.color_jitter = rule(0.5, fraction)
  # 'unit': pixel / 255 in [0, 1] (the notebook); 'centered': [-1, 1];
  # 'clip_centered': pixel minus the clip's mean frame, / 64, so that the
  # static background is 0: learns faster early on, but also erases what holds
  # still (an arm held up while the hand waves), and generalises worse to new
  # actors on synthetic_actions (README.md, Results).
  i.normalization = rule(
    'centered', one_of('unit', 'centered', 'clip_centered')
  )
  # What the model sees, from the normalized clip (video_ops.to_modality):
  # 'rgb' the frames; 'diff' the differences of consecutive sampled frames
  # (TSN's RGB difference: frame t minus frame t-1, a zero difference first,
  # so a clip keeps num_frames steps and what holds still is 0); 'rgb+diff'
  # both stacked as 6 channels; 'rgb+flow' the frames and 2 channels of
  # normal flow (the motion along the brightness gradient, whose sign does
  # not depend on what is light or dark). The models' input channels follow
  # it.
  i.modality = rule('rgb', one_of(*MODALITY_CHANNELS))
  # Encoded videos held for shuffling in training.
  i.shuffle_buffer = rule(512, positive)

  config.model = m = ml_collections.ConfigDict()
  # One of hpr.models.MODELS: convlstm, lrcn, single_frame.
  m.name = rule('lrcn', model_name)
  # How the named primitives (hpr.kernels) run: 'auto' picks each platform's
  # fastest when the step is lowered (the compiled kernels on a CPU, the
  # reference elsewhere); 'reference' runs the portable reference everywhere.
  m.impl = rule('auto', one_of('auto', 'reference'))
  # Compute dtype: 'float32' or 'bfloat16' (for accelerators; on a CPU it
  # runs the reference, slower). Parameters, optimizer state, loss, metrics
  # and checkpoints stay float32 either way.
  m.dtype = rule('float32', one_of('float32', 'bfloat16'))
  # Keyword arguments of each model's constructor; only the chosen one is
  # used. ConvLSTM is the notebook's network; LRCN and SingleFrame share a
  # smaller encoder (see below).
  m.convlstm = ml_collections.ConfigDict()
  # One ConvLSTM2D layer per entry.
  m.convlstm.filters = rule((4, 8, 14, 16), positive)
  m.convlstm.kernel_size = rule((3, 3), positive)
  # Input convolution; the recurrent is 'same'.
  m.convlstm.padding = rule('valid', one_of('valid', 'same'))
  m.convlstm.activation = 'tanh'
  # Keras 2's ConvLSTM2D default (the notebook's): clip(0.2x + 0.5, 0, 1).
  # 'hard_sigmoid_keras3' is Keras 3's relu6(x + 3) / 6; or 'sigmoid'.
  m.convlstm.recurrent_activation = 'hard_sigmoid'
  m.convlstm.recurrent_dropout = rule(0.2, fraction)
  # MaxPool (1, 2, 2) 'same' after each layer.
  m.convlstm.pool_size = rule((2, 2), positive)
  m.convlstm.dropout = rule(0.2, fraction)  # After every layer but the last.
  # 'flatten' (the notebook) or 'avgpool'.
  m.convlstm.head = rule('flatten', one_of('flatten', 'avgpool'))
  m.lrcn = ml_collections.ConfigDict()
  # Per-frame CNN, 3x3 'same' relu; the notebook's is (16, 32, 64, 64) with
  # pool_sizes (4, 4, 2, 2), which ends at 1x1. Three blocks keep a 2x2 map
  # (where the limbs are), learn faster and cost less.
  m.lrcn.conv_features = rule((16, 32, 64), positive)
  m.lrcn.kernel_size = rule((3, 3), positive)
  m.lrcn.pool_sizes = rule((4, 4, 2), positive)  # MaxPool after each conv.
  m.lrcn.dropout = rule(0.25, fraction)  # After every conv block but the last.
  # A frame's features from the last block's map: 'flatten' (the notebook;
  # keeps where things are) or 'avgpool' (the mean over space; the same
  # wherever the actor stands, and far fewer LSTM inputs).
  m.lrcn.frame_features = rule('flatten', one_of('flatten', 'avgpool'))
  m.lrcn.lstm_features = rule(64, positive)  # The notebook's is 32.
  # 'last': classify the last LSTM step (the notebook); 'mean': average the
  # per-step predictions (the LRCN paper).
  m.lrcn.readout = rule('last', one_of('last', 'mean'))
  m.single_frame = ml_collections.ConfigDict()
  # The same per-frame CNN as the LRCN's, so the two differ only in the LSTM.
  m.single_frame.conv_features = rule((16, 32, 64), positive)
  m.single_frame.kernel_size = rule((3, 3), positive)
  m.single_frame.pool_sizes = rule((4, 4, 2), positive)
  m.single_frame.dropout = rule(0.25, fraction)

  config.optimizer = o = ml_collections.ConfigDict()
  # 'adam' (the notebook), 'adamw' or 'sgd' (with momentum).
  o.name = rule('adam', one_of('adam', 'adamw', 'sgd'))
  o.learning_rate = rule(2e-3, positive)  # Peak learning rate.
  # 'constant' (the notebook) or 'warmup_cosine' (linear warm-up, then
  # cosine decay to 0 at the last epoch).
  o.schedule = rule('warmup_cosine', one_of('constant', 'warmup_cosine'))
  # Linear warm-up length for 'warmup_cosine'.
  o.warmup_epochs = rule(1.0, non_negative)
  o.weight_decay = rule(1e-4, non_negative)  # Used by 'adamw'.
  o.momentum = rule(0.9, fraction)  # Used by 'sgd'.
  # Clip gradients to this global norm; 0 is off.
  o.grad_clip_norm = rule(0.0, non_negative)

  config.training = t = ml_collections.ConfigDict()
  # Global batch size, split across all devices (must divide evenly).
  t.batch_size = rule(8, positive)
  t.num_epochs = rule(36, positive)
  t.label_smoothing = rule(0.0, fraction)
  # Early stopping (the notebook's EarlyStopping with restore_best_weights):
  # stop when `monitor` has not improved for `patience` epochs; the test split
  # is then evaluated with the best checkpoint. patience 0 turns it off.
  # 'val_loss' (lower is better; the notebook) or 'val_accuracy'.
  t.monitor = rule('val_accuracy', one_of('val_loss', 'val_accuracy'))
  t.patience = rule(8, non_negative)
  # Early stopping and the best checkpoint compare the mean of `monitor` over
  # the last monitor_smoothing epochs (1: each epoch's own value, the
  # notebook's). On a validation split of a few dozen clips one epoch's
  # accuracy is mostly noise; 3-5 epochs keep a lucky epoch from stopping
  # the run or winning the best checkpoint.
  t.monitor_smoothing = rule(1, positive)
  # A validation split with fewer clips logs a warning that says what to do
  # (more validation groups, or smoothing); 0 turns it off.
  t.min_val_clips = rule(100, non_negative)
  # Train loss/accuracy and steps/s to the writers.
  t.log_every_steps = rule(50, positive)
  # Extra checkpoints inside an epoch; 0 is off.
  t.checkpoint_every_steps = rule(0, non_negative)
  # Latest checkpoints kept, besides the best.
  t.checkpoints_to_keep = rule(2, positive)

  config.eval = e = ml_collections.ConfigDict()
  # Global; the last batch is padded and masked.
  e.batch_size = rule(32, positive)
  # Temporal views per test video (multi-clip testing): the test split is
  # run on num_test_clips clips of each video, spread over it as
  # input.eval_sampling allows, and their softmax predictions are averaged
  # per video. report.json gives both clip- and video-level numbers. 1 is the
  # single-clip protocol of the notebook. Validation always uses one clip.
  e.num_test_clips = rule(1, positive)
  # Spatial views per test clip: 1 (input.eval_crop) or 3 (squares of the
  # short side at the start, middle and end of the long side). A test video
  # gives num_test_clips x num_test_crops clips, averaged as above.
  e.num_test_crops = rule(1, one_of(1, 3))

  # Start the model from another run's checkpoint: 'WORKDIR' (its best
  # checkpoint) or 'WORKDIR:STEP'. Only the model's arrays are taken
  # (parameters, batch-norm statistics; they must fit this config's model);
  # the optimizer, schedule, step and data order start afresh, as in
  # fine-tuning (Scenic's init_from). Ignored once this run's workdir has a
  # checkpoint of its own: then it resumes. '' starts from random weights.
  config.init_from = rule('', init_from)

  # Persistent JAX compilation cache, so the second run of a config starts at
  # once. '' turns it off.
  config.jax_cache_dir = '~/.cache/hpr/jax'
  # On a host without GPU or TPU: split the CPU into this many JAX devices
  # and shard each batch over them as over GPUs, so the step's small ops run
  # on several cores at once (faster on 2+ cores: benchmarks/README.md).
  # Lowered to the largest count that divides both batch sizes; 1 = one
  # device. Ignored with a GPU or TPU, or when XLA_FLAGS sets
  # --xla_force_host_platform_device_count.
  config.cpu_devices = rule(2, positive)
  return config

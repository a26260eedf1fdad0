"""Default experiment: LRCN on the built-in synthetic_actions dataset.

This file is also the schema: every key hpr understands is here, with a comment.
Study configs start from it (`config = default.get_config()`) and change a few
keys; `hpr.config.validate` rejects keys that are not in this file.

  python -m hpr.main --config configs/default.py --workdir /tmp/hpr/default

Builds the dataset on first use (under a minute), trains and tests in under ten
minutes on a 2-core CPU; see README.md for the measured time and accuracy.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config (LRCN, synthetic_actions)."""
  config = ml_collections.ConfigDict()
  # Seeds parameter init, dropout, shuffling and augmentation. The same config
  # and seed give the same numbers, also across a resume.
  config.seed = 0

  config.dataset = d = ml_collections.ConfigDict()
  # TFDS name, optionally with a builder config: 'synthetic_actions/default',
  # 'synthetic_actions/tiny', or any prepared TFDS video dataset.
  d.name = 'synthetic_actions/default'
  # Where TFDS datasets are prepared and read; '' uses TFDS's default
  # ($TFDS_DATA_DIR or ~/tensorflow_datasets).
  d.data_dir = ''
  # Split names (TFDS split syntax, e.g. 'train[:80%]').
  d.train_split = 'train'
  d.eval_split = 'validation'  # Evaluated after every epoch.
  d.test_split = 'test'  # Evaluated once with the best checkpoint.
  # dataset.name = 'video_folder': your own videos, prepared once (README,
  # "Real videos"). Changing any key but num_workers prepares again, into
  # its own directory.
  d.video_folder = v = ml_collections.ConfigDict()
  # The folder of class folders: ROOT/<Class>/<video>.{avi,mp4,mkv,webm,mov}
  # (how UCF50, UCF101 and HMDB51 unpack).
  v.root = ''
  # Class folders to use, in label order; () uses all of them, sorted.
  v.classes = ()
  v.short_side = 128  # Frames are stored with this shorter side (JPEG).
  # Keep at most this many frames per video, evenly spaced over it; 0 keeps
  # all.
  v.max_frames = 0
  # Videos with fewer frames are short: 'loop' plays them again up to
  # min_frames, 'repeat_last' holds the last frame, 'drop' leaves them out
  # (the notebook). min_frames must be at least input.num_frames.
  v.min_frames = 20
  v.short_video = 'loop'
  # 'groups': by UCF group (v_<Class>_g<GG>_c<CC> names): test_groups, or
  # else leave-one-group-out fold `fold`; 'official': the split files in
  # split_dir (UCF101 trainlist0N/testlist0N.txt or HMDB51
  # *_test_splitN.txt, N = split_number); 'stratified': per-class random
  # fractions, for folders without groups; 'random_clips': the notebook's
  # random split of grouped clips, leaky, needs allow_leaky_split.
  v.split = 'groups'
  v.test_groups = ()  # Groups in the test split ('groups'); () uses fold.
  v.fold = 1  # Leave-one-group-out: group `fold` is the test split.
  # Validation is carved from the training groups: the last val_groups of
  # them ('groups'; 'official' where names have groups).
  v.val_groups = 2
  v.split_dir = ''  # Folder of the official split files ('official').
  v.split_number = 1  # Official split 1, 2 or 3.
  # Per-class fractions for 'stratified' and 'random_clips' (and for
  # validation of 'official' splits without groups), seeded by `seed`.
  v.test_fraction = 0.25
  v.val_fraction = 0.1
  v.seed = 0
  # A split that puts one actor and scene (UCF group) in train and test
  # overstates test accuracy: any split that would ('random_clips', or
  # 'stratified' over UCF-named videos) is refused unless this is set, and
  # then warns with the number of (class, group) pairs on both sides.
  v.allow_leaky_split = False
  # Worker processes that decode videos while preparing; 0: one per CPU.
  v.num_workers = 0

  config.input = i = ml_collections.ConfigDict()
  # Frames per clip. The notebook's SEQUENCE_LENGTH is 20; 10 frames (every
  # 4th of a 40-frame synthetic clip) halve the cost of a step, so the default
  # run trains twice as many epochs in its ten minutes and ends more accurate.
  i.num_frames = 10
  i.image_size = 64  # Frames are resized to image_size x image_size.
  # How frames are chosen from a video. 'uniform': evenly spaced over the
  # whole video (the notebook); 'strided': num_frames at frame_stride from an
  # offset (random in training, centred in evaluation); 'segments': one frame
  # from each of num_frames equal segments (random in training, the middle
  # in evaluation; TSN).
  i.train_sampling = 'uniform'
  i.eval_sampling = 'uniform'
  i.frame_stride = 2  # Used by 'strided' sampling.
  # Spatial crop of training clips, one box per clip, then resized to
  # image_size x image_size: 'resize' takes the whole frame (squeezed, the
  # notebook); 'random_resized' a random box of a fraction in crop_area of
  # the frame, aspect ratio (w/h) in crop_aspect; 'scale_jitter' a random
  # square of 1/s of the short side, s in scale_jitter.
  i.train_crop = 'resize'
  i.crop_area = (0.4, 1.0)
  i.crop_aspect = (0.75, 1.333)
  i.scale_jitter = (1.0, 1.33)
  # Evaluation: 'resize' (the notebook) or 'center' (the central square of
  # the short side). eval.num_test_crops = 3 replaces it in the test.
  i.eval_crop = 'resize'
  i.random_flip = True  # Horizontal flip in training.
  # Random per-clip hue, saturation, contrast and brightness change in
  # training (video_ops.color_jitter); 0 turns it off, 0.5 is strong.
  i.color_jitter = 0.5
  # 'unit': pixel / 255 in [0, 1] (the notebook); 'centered': [-1, 1];
  # 'clip_centered': pixel minus the clip's mean frame, / 64, so that the
  # static background is 0: learns faster early on, but also erases what holds
  # still (an arm held up while the hand waves), and generalises worse to new
  # actors on synthetic_actions (README.md, Results).
  i.normalization = 'centered'
  i.shuffle_buffer = 512  # Encoded videos held for shuffling in training.

  config.model = m = ml_collections.ConfigDict()
  m.name = 'lrcn'  # One of hpr.models.MODELS: convlstm, lrcn, single_frame.
  # How the named primitives (hpr.kernels) run: 'auto' picks each platform's
  # fastest when the step is lowered (the compiled kernels on a CPU, the
  # reference elsewhere); 'reference' runs the portable reference everywhere.
  m.impl = 'auto'
  # Compute dtype: 'float32' or 'bfloat16' (for accelerators; on a CPU it
  # runs the reference, slower). Parameters, optimizer state, loss, metrics
  # and checkpoints stay float32 either way.
  m.dtype = 'float32'
  # Keyword arguments of each model's constructor; only the chosen one is
  # used. ConvLSTM is the notebook's network; LRCN and SingleFrame share a
  # smaller encoder (see below).
  m.convlstm = ml_collections.ConfigDict()
  m.convlstm.filters = (4, 8, 14, 16)  # One ConvLSTM2D layer per entry.
  m.convlstm.kernel_size = (3, 3)
  m.convlstm.padding = 'valid'  # Input convolution; the recurrent is 'same'.
  m.convlstm.activation = 'tanh'
  # Keras 2's ConvLSTM2D default (the notebook's): clip(0.2x + 0.5, 0, 1).
  # 'hard_sigmoid_keras3' is Keras 3's relu6(x + 3) / 6; or 'sigmoid'.
  m.convlstm.recurrent_activation = 'hard_sigmoid'
  m.convlstm.recurrent_dropout = 0.2
  m.convlstm.pool_size = (2, 2)  # MaxPool (1, 2, 2) 'same' after each layer.
  m.convlstm.dropout = 0.2  # After every layer but the last.
  m.convlstm.head = 'flatten'  # 'flatten' (the notebook) or 'avgpool'.
  m.lrcn = ml_collections.ConfigDict()
  # Per-frame CNN, 3x3 'same' relu; the notebook's is (16, 32, 64, 64) with
  # pool_sizes (4, 4, 2, 2), which ends at 1x1. Three blocks keep a 2x2 map
  # (where the limbs are), learn faster and cost less.
  m.lrcn.conv_features = (16, 32, 64)
  m.lrcn.kernel_size = (3, 3)
  m.lrcn.pool_sizes = (4, 4, 2)  # MaxPool after each conv.
  m.lrcn.dropout = 0.25  # After every conv block but the last.
  m.lrcn.lstm_features = 64  # The notebook's is 32.
  # 'last': classify the last LSTM step (the notebook); 'mean': average the
  # per-step predictions (the LRCN paper).
  m.lrcn.readout = 'last'
  m.single_frame = ml_collections.ConfigDict()
  # The same per-frame CNN as the LRCN's, so the two differ only in the LSTM.
  m.single_frame.conv_features = (16, 32, 64)
  m.single_frame.kernel_size = (3, 3)
  m.single_frame.pool_sizes = (4, 4, 2)
  m.single_frame.dropout = 0.25

  config.optimizer = o = ml_collections.ConfigDict()
  o.name = 'adam'  # 'adam' (the notebook), 'adamw' or 'sgd' (with momentum).
  o.learning_rate = 2e-3  # Peak learning rate.
  # 'constant' (the notebook) or 'warmup_cosine' (linear warm-up, then
  # cosine decay to 0 at the last epoch).
  o.schedule = 'warmup_cosine'
  o.warmup_epochs = 1.0  # Linear warm-up length for 'warmup_cosine'.
  o.weight_decay = 1e-4  # Used by 'adamw'.
  o.momentum = 0.9  # Used by 'sgd'.
  o.grad_clip_norm = 0.0  # Clip gradients to this global norm; 0 is off.

  config.training = t = ml_collections.ConfigDict()
  # Global batch size, split across all devices (must divide evenly).
  t.batch_size = 8
  t.num_epochs = 36
  t.label_smoothing = 0.0
  # Early stopping (the notebook's EarlyStopping with restore_best_weights):
  # stop when `monitor` has not improved for `patience` epochs; the test split
  # is then evaluated with the best checkpoint. patience 0 turns it off.
  # 'val_loss' (lower is better; the notebook) or 'val_accuracy'.
  t.monitor = 'val_accuracy'
  t.patience = 8
  t.log_every_steps = 50  # Train loss/accuracy and steps/s to the writers.
  t.checkpoint_every_steps = 0  # Extra checkpoints inside an epoch; 0 is off.
  t.checkpoints_to_keep = 2  # Latest checkpoints kept, besides the best.

  config.eval = e = ml_collections.ConfigDict()
  e.batch_size = 32  # Global; the last batch is padded and masked.
  # Temporal views per test video (multi-clip testing): the test split is
  # run on num_test_clips clips of each video, spread over it as
  # input.eval_sampling allows, and their softmax predictions are averaged
  # per video. report.json gives both clip- and video-level numbers. 1 is the
  # single-clip protocol of the notebook. Validation always uses one clip.
  e.num_test_clips = 1
  # Spatial views per test clip: 1 (input.eval_crop) or 3 (squares of the
  # short side at the start, middle and end of the long side). A test video
  # gives num_test_clips x num_test_crops clips, averaged as above.
  e.num_test_crops = 1

  # Start the model from another run's checkpoint: 'WORKDIR' (its best
  # checkpoint) or 'WORKDIR:STEP'. Only the model's arrays are taken
  # (parameters, batch-norm statistics; they must fit this config's model);
  # the optimizer, schedule, step and data order start afresh, as in
  # fine-tuning (Scenic's init_from). Ignored once this run's workdir has a
  # checkpoint of its own: then it resumes. '' starts from random weights.
  config.init_from = ''

  # Persistent JAX compilation cache, so the second run of a config starts at
  # once. '' turns it off.
  config.jax_cache_dir = '~/.cache/hpr/jax'
  # On a host without GPU or TPU: split the CPU into this many JAX devices
  # and shard each batch over them as over GPUs, so the step's small ops run
  # on several cores at once (faster on 2+ cores: benchmarks/README.md).
  # Lowered to the largest count that divides both batch sizes; 1 = one
  # device. Ignored with a GPU or TPU, or when XLA_FLAGS sets
  # --xla_force_host_platform_device_count.
  config.cpu_devices = 2
  return config

"""The absl flag definitions of tf_slwta, grouped as `ExperimentConfig` is.

`SECTIONS` names the flags of each settings section; `define` declares them
all with their defaults taken from the dataclasses in `config`.
"""

from absl import flags

from tf_slwta import config as config_lib

OUTPUT_DIR = 'runs/quickstart'  # --output_dir's default, the default job's.
SECTIONS = {
    'data': ('dataset', 'data_dir', 'tfds_data_dir', 'train_examples',
             'eval_examples', 'batch_size', 'eval_batch_size', 'augment',
             'download'),
    'model': ('model', 'activation', 'depth', 'widen_factor',
              'seed_cnn_filters', 'seed_cnn_units', 'pni', 'pni_alpha_init',
              'pni_channelwise', 'pni_at_test', 'lwta_competitors',
              'lwta_temperature', 'lwta_test_temperature',
              'lwta_deterministic', 'ibp', 'ibp_threshold',
              'seed_cnn_batch_norm'),
    'attack': ('attacks', 'combined', 'fgsm_eps', 'pgd_eps', 'pgd_alpha',
               'pgd_steps', 'pgd_l2_eps', 'pgd_l2_alpha', 'pgd_restarts',
               'pgd_random_start', 'cw_c', 'cw_kappa', 'cw_steps',
               'cw_binary_search_steps', 'cw_learning_rate', 'eot_samples',
               'mc_samples', 'attack_seed', 'aa_norm', 'aa_eps', 'apgd_steps',
               'apgd_restarts', 'apgd_target_classes', 'square_queries',
               'square_p_init', 'square_samples', 'gradient_modes',
               'randomized_mode_attacks',
               'transfer_from',
               'decision_repeats', 'cascade', 'cascade_lead_steps',
               'cascade_focus', 'cascade_focus_eot', 'cascade_focus_steps',
               'decision_block',
               'decision_z', 'passes_per_call', 'max_call_images'),
    'train': ('epochs', 'kl_anneal_epochs', 'learning_rate', 'momentum', 'nesterov',
              'weight_decay', 'lr_schedule', 'lr_warmup_epochs',
              'lr_decay_epochs', 'lr_decay_ratio', 'label_smoothing', 'seed',
              'strategy', 'checkpoint_every_steps', 'keep_checkpoints',
              'log_every_steps', 'mixture', 'noise_sigma',
              'clean_loss_weight', 'lwta_kl_weight', 'ibp_kl_weight',
              'ibp_learning_rate', 'mixture_gradient'),
    'audit': ('audit_sweep_examples', 'audit_eps_multiples', 'audit_steps',
              'audit_noise_draws', 'audit_eps_spot', 'audit_tolerance',
              'audit_chance_share',
              'audit_escalate', 'audit_escalation_rounds',
              'audit_distill_examples', 'audit_distill_pool',
              'audit_escalation_queries'),
    'certify': ('certify_sigma', 'certify_n0', 'certify_n', 'certify_alpha',
                'certify_batch_size', 'certify_radii'),
    'export': ('export_dir', 'export_name', 'export_version',
               'export_sampling'),
    'serve': ('server', 'serving_protocol', 'serving_timeout', 'images',
              'serving_batch_size', 'export_name', 'export_version'),
}


def define(fv: flags.FlagValues) -> None:
  """Declares every tf_slwta flag on `fv` (validators: see `convert`)."""
  d_data, d_model, d_train = (config_lib.DataConfig(), config_lib.ModelConfig(),
                              config_lib.TrainConfig())
  # Run.
  flags.DEFINE_enum('mode', 'train', config_lib.MODES,
                    'train: train (or resume) and evaluate every epoch; '
                    'evaluate: score the latest checkpoint in --output_dir; '
                    'audit: the gradient-masking checklist on it; '
                    'certify: randomized smoothing; grid: many flagfiles; '
                    'export: write the latest checkpoint as a SavedModel '
                    'for TF Serving; predict: classify through a running '
                    'TF Serving.',
                    flag_values=fv)
  flags.DEFINE_string('output_dir', OUTPUT_DIR,
                      'The run\'s folder (config.json, checkpoints, '
                      'TensorBoard logs, metrics.jsonl, results); a run that '
                      'has one is opened from its config.json.',
                      flag_values=fv)
  # Data.
  flags.DEFINE_enum('dataset', d_data.dataset, config_lib.DATASETS,
                    'Data set.', flag_values=fv)
  flags.DEFINE_string('data_dir', None,
                      'Folder with the four Fashion-MNIST IDX .gz files '
                      '(default: /usr/share/datasets/fashion-mnist).',
                      flag_values=fv)
  flags.DEFINE_string('tfds_data_dir', None,
                      'tensorflow-datasets folder for mnist and cifar10.',
                      flag_values=fv)
  flags.DEFINE_integer('train_examples', d_data.train_examples,
                       'Use the first N training examples (0: all).',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('eval_examples', d_data.eval_examples,
                       'Use the first N test examples (0: all).',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('batch_size', d_data.batch_size,
                       'Global training batch over all replicas.',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('eval_batch_size', d_data.eval_batch_size,
                       'Global evaluation batch over all replicas.',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_enum('augment', 'auto', ['auto', 'true', 'false'],
                    'Pad-crop and flip training images (auto: on for '
                    'cifar10 only).', flag_values=fv)
  flags.DEFINE_bool('download', d_data.download,
                    'Allow downloading a data set that is not found locally.',
                    flag_values=fv)
  # Model.
  flags.DEFINE_enum('model', d_model.name, config_lib.MODELS, 'Network.',
                    flag_values=fv)
  flags.DEFINE_enum('activation', d_model.activation, config_lib.ACTIVATIONS,
                    'Activation after every linear map.', flag_values=fv)
  flags.DEFINE_integer('depth', d_model.depth, 'WideResNet depth (6n + 4).',
                       flag_values=fv)
  flags.DEFINE_integer('widen_factor', d_model.widen_factor,
                       'WideResNet width multiplier.', lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_list('seed_cnn_filters',
                    [str(f) for f in d_model.seed_cnn_filters],
                    'Channels of the seed CNN convolutions.', flag_values=fv)
  flags.DEFINE_integer('seed_cnn_units', d_model.seed_cnn_units,
                       'Units of the seed CNN dense layer.', lower_bound=1,
                       flag_values=fv)
  # Training.
  flags.DEFINE_integer('epochs', d_train.epochs, 'Training epochs.',
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_float('learning_rate', d_train.learning_rate,
                     'Peak SGD learning rate.', flag_values=fv)
  flags.DEFINE_float('momentum', d_train.momentum, 'SGD momentum.',
                     flag_values=fv)
  flags.DEFINE_bool('nesterov', d_train.nesterov, 'Nesterov momentum.',
                    flag_values=fv)
  flags.DEFINE_float('weight_decay', d_train.weight_decay,
                     'Decoupled weight decay of SGD.', lower_bound=0.0,
                     flag_values=fv)
  flags.DEFINE_enum('lr_schedule', d_train.lr_schedule,
                    config_lib.LR_SCHEDULES, 'Learning-rate schedule.',
                    flag_values=fv)
  flags.DEFINE_float('lr_warmup_epochs', d_train.lr_warmup_epochs,
                     'Linear warm-up epochs.', lower_bound=0.0, flag_values=fv)
  flags.DEFINE_list('lr_decay_epochs', [],
                    "Epochs where the 'step' schedule decays.", flag_values=fv)
  flags.DEFINE_float('lr_decay_ratio', d_train.lr_decay_ratio,
                     "Decay factor of the 'step' schedule.", flag_values=fv)
  flags.DEFINE_float('label_smoothing', d_train.label_smoothing,
                     'Label smoothing of the cross-entropy, in [0, 1).',
                     flag_values=fv)
  flags.DEFINE_integer('seed', d_train.seed,
                       'Seed of weights, shuffling and augmentation.',
                       flag_values=fv)
  flags.DEFINE_enum('strategy', d_train.strategy, config_lib.STRATEGIES,
                    'auto: MirroredStrategy over local GPUs (or the CPU), '
                    'MultiWorkerMirroredStrategy if TF_CONFIG names several '
                    'workers; mirrored; multi_worker (TF_CONFIG); one_device.',
                    flag_values=fv)
  flags.DEFINE_integer('checkpoint_every_steps',
                       d_train.checkpoint_every_steps,
                       'Also checkpoint every N steps (0: each epoch end).',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('keep_checkpoints', d_train.keep_checkpoints,
                       'Checkpoints to keep.', lower_bound=1, flag_values=fv)
  flags.DEFINE_integer('log_every_steps', d_train.log_every_steps,
                       'Progress and TensorBoard interval in steps.',
                       lower_bound=1, flag_values=fv)

  # Stochastic LWTA and IBP.
  flags.DEFINE_integer('lwta_competitors', d_model.lwta_competitors,
                       'Units per LWTA block (--activation=lwta).',
                       flag_values=fv)
  flags.DEFINE_float('lwta_temperature', d_model.lwta_temperature,
                     'LWTA Gumbel-softmax temperature in training.',
                     flag_values=fv)
  flags.DEFINE_float('lwta_test_temperature', d_model.lwta_test_temperature,
                     'LWTA temperature at test (sampling stays on).',
                     flag_values=fv)
  flags.DEFINE_bool('lwta_deterministic', d_model.lwta_deterministic,
                    'Hard argmax LWTA winners instead of sampling.',
                    flag_values=fv)
  flags.DEFINE_bool('ibp', d_model.ibp,
                    'Indian Buffet Process priors (blocks of '
                    '--lwta_competitors) on seed_cnn\'s hidden layers or '
                    'wide_resnet\'s residual convolutions.', flag_values=fv)
  flags.DEFINE_float('ibp_threshold', d_model.ibp_threshold,
                     'IBP utilities at or under it prune their block at test.',
                     flag_values=fv)
  flags.DEFINE_float('kl_anneal_epochs', d_train.kl_anneal_epochs,
                     'Epochs over which the KL weight grows from 0 to 1.',
                     flag_values=fv)
  flags.DEFINE_float('lwta_kl_weight', d_train.lwta_kl_weight,
                     'Weight of the LWTA winners\' per-example KL in the '
                     'objective (1: the ELBO).', flag_values=fv)
  flags.DEFINE_float('ibp_kl_weight', d_train.ibp_kl_weight,
                     'Weight of the IBP KL / training-set size in the '
                     'objective (1: the ELBO).', flag_values=fv)
  flags.DEFINE_float('ibp_learning_rate', d_train.ibp_learning_rate,
                     'Peak learning rate of the IBP parameters\' own Adam '
                     '(no weight decay).', flag_values=fv)
  flags.DEFINE_enum('seed_cnn_batch_norm', 'auto', ['auto', 'true', 'false'],
                    'BatchNorm after seed_cnn\'s hidden linear maps (auto: '
                    'with --activation=lwta only).', flag_values=fv)

  # Defenses.
  flags.DEFINE_enum('pni', d_model.pni, config_lib.PNI_MODES,
                    'Parametric Noise Injection in seed_cnn: activation (the '
                    "seed's three places), weight (every kernel), both.",
                    flag_values=fv)
  flags.DEFINE_float('pni_alpha_init', d_model.pni_alpha_init,
                     'Initial PNI noise scale.', flag_values=fv)
  flags.DEFINE_bool('pni_channelwise', d_model.pni_channelwise,
                    'One PNI scale per channel instead of per layer.',
                    flag_values=fv)
  flags.DEFINE_bool('pni_at_test', d_model.pni_at_test,
                    'Keep PNI noise on at test time.', flag_values=fv)
  flags.DEFINE_list('mixture', [],
                    'Adversarial training: branch:weight entries over '
                    f'{",".join(config_lib.MIXTURE_BRANCHES)}, one branch '
                    "drawn per step; 'seed' is the seed's scheme "
                    '(noise:1,fgsm:1,pgd:1,cw:1,clean:4); empty: clean.',
                    flag_values=fv)
  flags.DEFINE_float('noise_sigma', d_train.noise_sigma,
                     'Std of the mixture\'s Gaussian-noise branch.',
                     flag_values=fv)
  flags.DEFINE_float('clean_loss_weight', d_train.clean_loss_weight,
                     'w of w * CE(clean) + (1 - w) * CE(perturbed).',
                     flag_values=fv)
  flags.DEFINE_enum('mixture_gradient', d_train.mixture_gradient,
                    config_lib.MIXTURE_GRADIENTS,
                    'How the mixture\'s attacks differentiate stochastic '
                    'layers: training_temperature (LWTA sampled at its '
                    'training temperature), sample (as served), expected or '
                    'straight_through (adaptive surrogates).',
                    flag_values=fv)
  d_audit = config_lib.AuditConfig()
  flags.DEFINE_integer('audit_sweep_examples', d_audit.sweep_examples,
                       'Images of the audit\'s eps and steps sweeps.',
                       flag_values=fv)
  flags.DEFINE_list('audit_eps_multiples',
                    [f'{m:g}' for m in d_audit.eps_multiples],
                    'Multiples of --aa_eps the audit sweeps; accuracy must '
                    'reach about 0 at the largest.', flag_values=fv)
  flags.DEFINE_list('audit_steps', [str(s) for s in d_audit.sweep_steps],
                    'APGD-CE iteration counts the audit sweeps; accuracy '
                    'must not rise with more.', flag_values=fv)
  flags.DEFINE_integer('audit_noise_draws', d_audit.noise_draws,
                       'Random points per image of the random-noise floor.',
                       flag_values=fv)
  flags.DEFINE_integer('audit_eps_spot', d_audit.eps_spot,
                       'The eps sweep attacks at each larger radius only the '
                       'images still standing, plus this many a smaller one '
                       'broke, afresh (a spot check); 0 attacks every image '
                       'at every radius.', flag_values=fv)
  flags.DEFINE_float('audit_tolerance', d_audit.tolerance,
                     'How far one number may beat another it must not beat '
                     'before an audit check fails.', flag_values=fv)
  flags.DEFINE_float('audit_chance_share', d_audit.chance_share,
                     'Accuracy at the largest eps that counts as about 0, '
                     'as a share of chance (1 / classes).', flag_values=fv)
  flags.DEFINE_boolean('audit_escalate', d_audit.escalate,
                       'When a check finds masked gradients, attack the '
                       'surviving images with a larger Square and a transfer '
                       'from a distilled network until the worst case stops '
                       'moving.', flag_values=fv)
  flags.DEFINE_integer('audit_escalation_rounds', d_audit.escalation_rounds,
                       'At most this many escalation rounds.', flag_values=fv)
  flags.DEFINE_integer('audit_escalation_queries', d_audit.escalation_queries,
                       'Square queries per restart in escalation (0: ten '
                       'times --square_queries, at least 1000).',
                       flag_values=fv)
  flags.DEFINE_integer('audit_distill_examples', d_audit.distill_examples,
                       'Without --transfer_from, the audit\'s transfer attack '
                       'comes from a small network distilled from the model\'s '
                       'answers around the first this many test images (0: '
                       'none).', flag_values=fv)
  flags.DEFINE_integer('audit_distill_pool', d_audit.distill_pool,
                       'Training images (labelled by the model, not by their '
                       'labels) the distilled source also learns from (0: '
                       'only the audited images and points around them).',
                       flag_values=fv)
  d_certify = config_lib.CertifyConfig()
  flags.DEFINE_float('certify_sigma', d_certify.sigma,
                     'Randomized smoothing noise std (--mode=certify).',
                     flag_values=fv)
  flags.DEFINE_integer('certify_n0', d_certify.n0,
                       'CERTIFY samples that select the class.',
                       flag_values=fv)
  flags.DEFINE_integer('certify_n', d_certify.n,
                       'PREDICT / CERTIFY estimation samples.', flag_values=fv)
  flags.DEFINE_float('certify_alpha', d_certify.alpha,
                     'Failure probability of the certificate.', flag_values=fv)
  flags.DEFINE_integer('certify_batch_size', d_certify.batch_size,
                       'Noisy copies per forward pass.', flag_values=fv)
  flags.DEFINE_list('certify_radii', [str(r) for r in d_certify.radii],
                    'L2 radii of the certified-accuracy table.',
                    flag_values=fv)
  flags.DEFINE_list('grid', [],
                    'Flagfiles (or glob patterns) of the runs --mode=grid '
                    'trains and evaluates; default flags/seed_table/[0-9]*.cfg.',
                    flag_values=fv)
  flags.DEFINE_string('grid_overrides', None,
                      'Flagfile applied after each grid row (e.g. a budget).',
                      flag_values=fv)

  # Export to TF Serving, and prediction through it.
  d_export, d_serve = config_lib.ExportConfig(), config_lib.ServeConfig()
  flags.DEFINE_string('export_dir', d_export.export_dir,
                      '--mode=export writes <export_dir>/<name>/<version>/ '
                      'and <export_dir>/models.config.', flag_values=fv)
  flags.DEFINE_string('export_name', d_export.name,
                      'Served model name that --mode=export writes and '
                      '--mode=predict asks for (default: the last part of '
                      '--output_dir).', flag_values=fv)
  flags.DEFINE_integer('export_version', d_export.version,
                       'Version --mode=export writes (0: the next one; an '
                       'existing version is never overwritten) or '
                       '--mode=predict asks for (0: the latest).',
                       flag_values=fv)
  flags.DEFINE_enum('export_sampling', d_export.sampling,
                    config_lib.EXPORT_SAMPLING,
                    'How the export runs a stochastic model\'s --mc_samples '
                    'passes: auto (one example at a time only where noise is '
                    'shared across a batch, e.g. PNI), batched (faster; such '
                    'noise is then shared within a request), per_example.',
                    flag_values=fv)
  flags.DEFINE_string('server', d_serve.server,
                      'TF Serving address for --mode=predict: HOST:PORT '
                      '(8501 REST, 8500 gRPC by default).', flag_values=fv)
  flags.DEFINE_enum('serving_protocol', d_serve.protocol,
                    config_lib.SERVING_PROTOCOLS,
                    'rest (POST /v1/models/NAME:predict) or grpc '
                    '(PredictionService).', flag_values=fv)
  flags.DEFINE_float('serving_timeout', d_serve.timeout,
                     'Seconds to wait for each request.', flag_values=fv)
  flags.DEFINE_list('images', [],
                    'Image files --mode=predict classifies (empty: the test '
                    'split of --dataset).', flag_values=fv)
  flags.DEFINE_integer('serving_batch_size', d_serve.batch_size,
                       'Images per --mode=predict request.', flag_values=fv)

  # Attacks (robustness evaluation).
  d_attack = config_lib.AttackConfig()
  flags.DEFINE_bool('evaluate_robustness', False,
                    'After --mode=train, also attack the test examples and '
                    'write the robustness table.', flag_values=fv)
  flags.DEFINE_list('attacks', list(d_attack.attacks),
                    f'Attacks to run, in order: any of '
                    f'{",".join(config_lib.ATTACKS)} (empty: none).',
                    flag_values=fv)
  flags.DEFINE_enum('combined', d_attack.combined, config_lib.COMBINED_MODES,
                    'worst_case: robust only if every attack fails; '
                    "sequential: attacks chained as in the seed's figure.",
                    flag_values=fv)
  flags.DEFINE_float('fgsm_eps', d_attack.fgsm_eps, 'FGSM L-inf budget.',
                     flag_values=fv)
  flags.DEFINE_float('pgd_eps', d_attack.pgd_eps, 'PGD L-inf budget.',
                     flag_values=fv)
  flags.DEFINE_float('pgd_alpha', d_attack.pgd_alpha, 'PGD L-inf step.',
                     flag_values=fv)
  flags.DEFINE_integer('pgd_steps', d_attack.pgd_steps,
                       'PGD iterations (both norms).', flag_values=fv)
  flags.DEFINE_float('pgd_l2_eps', d_attack.pgd_l2_eps, 'PGD L2 budget.',
                     flag_values=fv)
  flags.DEFINE_float('pgd_l2_alpha', d_attack.pgd_l2_alpha, 'PGD L2 step.',
                     flag_values=fv)
  flags.DEFINE_integer('pgd_restarts', d_attack.pgd_restarts,
                       'PGD random restarts (worst case kept).',
                       flag_values=fv)
  flags.DEFINE_bool('pgd_random_start', d_attack.pgd_random_start,
                    'Start PGD at a random point of the ball.', flag_values=fv)
  flags.DEFINE_float('cw_c', d_attack.cw_c, 'Carlini-Wagner initial c.',
                     flag_values=fv)
  flags.DEFINE_float('cw_kappa', d_attack.cw_kappa,
                     'Carlini-Wagner confidence kappa.', flag_values=fv)
  flags.DEFINE_integer('cw_steps', d_attack.cw_steps,
                       'Carlini-Wagner Adam iterations per search step.',
                       flag_values=fv)
  flags.DEFINE_integer('cw_binary_search_steps',
                       d_attack.cw_binary_search_steps,
                       'Carlini-Wagner binary-search steps over c.',
                       flag_values=fv)
  flags.DEFINE_float('cw_learning_rate', d_attack.cw_learning_rate,
                     'Carlini-Wagner Adam step size.', flag_values=fv)
  flags.DEFINE_integer('eot_samples', d_attack.eot_samples,
                       'Passes averaged per attack gradient (EOT) for '
                       'stochastic models.', flag_values=fv)
  flags.DEFINE_integer('mc_samples', d_attack.mc_samples,
                       'Passes whose mean probabilities make the decision, '
                       'when attacking and when scoring.', flag_values=fv)
  flags.DEFINE_integer('attack_seed', d_attack.seed,
                       'Seed of the attacks\' random starts.', flag_values=fv)
  flags.DEFINE_enum('aa_norm', d_attack.aa_norm, config_lib.AA_NORMS,
                    'Threat model of apgd_ce, apgd_dlr, apgd_t, square and '
                    'transfer: inf (L-inf) or 2 (L2).', flag_values=fv)
  flags.DEFINE_float('aa_eps', d_attack.aa_eps,
                     'Radius of that threat model (e.g. 0.1 L-inf for '
                     'Fashion-MNIST, 8/255 for CIFAR-10).', flag_values=fv)
  flags.DEFINE_integer('apgd_steps', d_attack.apgd_steps,
                       'APGD iterations per run.', flag_values=fv)
  flags.DEFINE_integer('apgd_restarts', d_attack.apgd_restarts,
                       'APGD-CE / APGD-DLR random restarts.', flag_values=fv)
  flags.DEFINE_integer('apgd_target_classes', d_attack.apgd_target_classes,
                       'APGD-T target classes.', flag_values=fv)
  flags.DEFINE_integer('square_queries', d_attack.square_queries,
                       'Square attack iterations (queries).', flag_values=fv)
  flags.DEFINE_float('square_p_init', d_attack.square_p_init,
                     'Square attack initial window share.', flag_values=fv)
  flags.DEFINE_integer('square_samples', d_attack.square_samples,
                       'Passes per margin estimate when Square searches a '
                       'stochastic model (0: --mc_samples).', flag_values=fv)
  flags.DEFINE_list('randomized_mode_attacks',
                    list(d_attack.randomized_mode_attacks),
                    'The gradient attacks of --attacks that also run in the '
                    'gradient modes with randomness (sample, '
                    'straight_through, the temperatures); the others run '
                    'only in the modes without (empty: all in every mode).',
                    flag_values=fv)
  flags.DEFINE_list('gradient_modes', list(d_attack.gradient_modes),
                    'How gradient attacks differentiate a stochastic model: '
                    'auto (every mode the model\'s layers respond to, if it '
                    'is stochastic), or some of '
                    f'{",".join(config_lib.GRADIENT_MODES)} (sample: EOT '
                    'over the sampled passes; expected: the layers\' '
                    'expectation; straight_through: sampled forward, '
                    'expected backward; training_temperature and '
                    'soft_temperature: LWTA sampled at its training '
                    'temperature, or between that and the test one).',
                    flag_values=fv)
  flags.DEFINE_string('transfer_from', d_attack.transfer_from,
                      'Run folder of the source model for --attacks=transfer '
                      '(e.g. the ReLU twin).', flag_values=fv)
  flags.DEFINE_integer('decision_repeats', d_attack.decision_repeats,
                       'Fresh decisions per image that score a stochastic '
                       'model (mean = accuracy, spread = its Monte Carlo '
                       'standard error).', flag_values=fv)
  flags.DEFINE_boolean('cascade', d_attack.cascade,
                       'Run each attack only on the images no earlier attack '
                       'broke, cheapest and strongest first: the same worst '
                       'case for less, without per-attack rows (the audit '
                       'gives the worst case after each stage instead).',
                       flag_values=fv)
  flags.DEFINE_integer('cascade_lead_steps', d_attack.cascade_lead_steps,
                       'APGD iterations of the attacks in the cascade\'s '
                       'lead mode (that of its first attack, the one that '
                       'meets every image; 0: --apgd_steps).',
                       flag_values=fv)
  flags.DEFINE_float('cascade_focus', d_attack.cascade_focus,
                     'Share in [0, 1] of the images a stochastic model\'s '
                     'cascade leaves after its iterative attacks, those '
                     'nearest the decision boundary, that APGD-CE then '
                     'attacks with --cascade_focus_eot passes per gradient '
                     'and --cascade_focus_steps steps in every randomized '
                     'gradient mode (0: none).', flag_values=fv)
  flags.DEFINE_integer('cascade_focus_eot', d_attack.cascade_focus_eot,
                       'EOT passes per gradient of the --cascade_focus '
                       'stage.', flag_values=fv)
  flags.DEFINE_integer('cascade_focus_steps', d_attack.cascade_focus_steps,
                       'APGD iterations of the --cascade_focus stage.',
                       flag_values=fv)
  flags.DEFINE_integer('decision_block', d_attack.decision_block,
                       'Passes a stochastic decision draws at a time until '
                       'its answer is settled (up to --mc_samples); 0 draws '
                       'them all.', flag_values=fv)
  flags.DEFINE_float('decision_z', d_attack.decision_z,
                     'Standard errors that settle a decision early.',
                     flag_values=fv)
  flags.DEFINE_integer('passes_per_call', d_attack.passes_per_call,
                       'Monte Carlo/EOT passes run as one call on the batch '
                       'tiled this many times (1 on CPUs; raise it on a GPU '
                       'a batch leaves idle).', flag_values=fv)
  flags.DEFINE_integer('max_call_images', d_attack.max_call_images,
                       'Most images in one batched call (memory cap of '
                       '--passes_per_call).', flag_values=fv)

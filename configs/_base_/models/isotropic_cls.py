# Task base: ImageClassifier around an isotropic backbone (mean pooling -> linear head). The backbone's type, size
# and mixer come from a family base (isotropic/<mixer>-<size>.py): model = dict(backbone=_base_.backbone).
model = dict(
    type='ImageClassifier',
    backbone=dict(img_size=224, patch_size=16, out_type='featmap', drop_path_rate=0.1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=192,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02)],
    ),
)

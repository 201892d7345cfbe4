# ImageClassifier around the isotropic LinearViT backbone (mean pooling -> linear head).
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='vla_mm.LinearViT',
        arch='tiny',
        img_size=224,
        patch_size=16,
        mixer=dict(type='linear_attn', feature_map='elu1'),
        out_type='featmap',
        drop_path_rate=0.1,
    ),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=192,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02)],
    ),
)

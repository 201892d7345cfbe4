# Task base: ImageClassifier around a four-stage backbone (last stage, mean pooling -> linear head). The backbone
# comes from a family base (hierarchical/<model>-<size>.py): model = dict(backbone=_base_.backbone).
model = dict(
    type='ImageClassifier',
    backbone=dict(img_size=224, out_indices=(3, ), drop_path_rate=0.1),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=512,
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02)],
    ),
)

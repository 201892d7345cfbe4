# Synthetic shapes classification (ImageNet folder layout), generated into data/shapes/cls on first use.
dataset_type = 'vla_mm.ShapesClsDataset'
data_root = 'data/shapes/cls'
# one large shape per image on a half-cluttered background, 48 px (see docs/results.md for how this was chosen)
shapes_generate = dict(image_size=48, num_train=10000, num_val=600, min_shapes=1, max_shapes=1,
                       size_range=[0.3, 0.45], clutter=0.5, seed=0)
data_preprocessor = dict(
    num_classes=6,
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    to_rgb=True,
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split='train', generate=shapes_generate,
                 pipeline=train_pipeline),
)
val_dataloader = dict(
    batch_size=128,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split='val', generate=shapes_generate,
                 pipeline=test_pipeline),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

# Masked image modeling on the synthetic shapes images (the classification data, labels unused).
# SimMIM masks come from SimMIMMaskGenerator in the pipeline; MAE masks are drawn inside the backbone.
dataset_type = 'vla_mm.ShapesClsDataset'
data_root = 'data/shapes/cls'
shapes_generate = dict(image_size=32, num_train=3000, num_val=600, seed=0)
data_preprocessor = dict(
    type='SelfSupDataPreprocessor',
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    to_rgb=True,
)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='SimMIMMaskGenerator', input_size=32, mask_patch_size=8, model_patch_size=4, mask_ratio=0.6),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=64,
    num_workers=2,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(type=dataset_type, data_root=data_root, split='train', generate=shapes_generate,
                 pipeline=train_pipeline),
)

"""Tiny derived configs for the four pipelines (CPU CI): each inherits a real config of configs/linear_vit/
and shrinks the model (2 blocks, 32 channels) and the data (a private copy of the shapes data in tmp_path)."""
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CFG = osp.join(ROOT, 'configs', 'linear_vit')

TINY_ARCH = "dict(_delete_=True, embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=2.0)"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def seg_config(tmp_path, name='seg.py', extra='', model_extra='', backbone_extra=''):
    data = tmp_path / 'seg'
    return write(tmp_path, name, f'''
_base_ = [{osp.join(CFG, 'upernet_linear-vit-t_shapes-seg.py')!r}]
shapes_generate = dict(image_size=64, num_train=12, num_val=4, seed=1)
crop_size = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch={TINY_ARCH}, img_size=64, patch_size=4, out_indices=(1, ), drop_path_rate=0.0,
                  {backbone_extra}),
    neck=dict(in_channels=32, out_channels=16, patch_size=4),
    {model_extra}
    decode_head=dict(in_channels=[16, 16, 16, 16], channels=16, pool_scales=(1, 2)),
    auxiliary_head=dict(in_channels=16, channels=8),
)
train_dataloader = dict(batch_size=4, num_workers=0,
                        dataset=dict(data_root={str(data)!r}, generate=shapes_generate, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, dataset=dict(data_root={str(data)!r}, generate=shapes_generate,
                                                  pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=4)]
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=4),
                     visualization=dict(type='SegVisualizationHook', draw=False))
{extra}
''')


def det_config(tmp_path, name='det.py', extra='', backbone_extra=''):
    data = tmp_path / 'det'
    return write(tmp_path, name, f'''
_base_ = [{osp.join(CFG, 'mask-rcnn_linear-vit-t_fpn_shapes-det.py')!r}]
shapes_generate = dict(image_size=64, num_train=8, num_val=4, seed=1)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
model = dict(
    backbone=dict(arch={TINY_ARCH}, img_size=64, patch_size=8, out_indices=(1, ), drop_path_rate=0.0,
                  {backbone_extra}),
    neck=[
        dict(type='vla_mm.SimpleFeaturePyramid', in_channels=32, out_channels=16, patch_size=8, norm='LN'),
        dict(type='FPN', in_channels=[16, 16, 16, 16], out_channels=16, num_outs=5),
    ],
    rpn_head=dict(in_channels=16, feat_channels=16),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=16), bbox_head=dict(in_channels=16, fc_out_channels=32),
                  mask_roi_extractor=dict(out_channels=16),
                  mask_head=dict(in_channels=16, conv_out_channels=16, num_convs=1)),
    train_cfg=dict(rpn=dict(sampler=dict(num=32)), rpn_proposal=dict(nms_pre=200, max_per_img=50),
                   rcnn=dict(sampler=dict(num=32))),
    test_cfg=dict(rpn=dict(nms_pre=100, max_per_img=20), rcnn=dict(score_thr=0.0, max_per_img=10)),
)
train_dataloader = dict(batch_size=4, num_workers=0,
                        dataset=dict(data_root={str(data)!r}, generate=shapes_generate, pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0, dataset=dict(data_root={str(data)!r}, generate=shapes_generate,
                                                                pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file={str(data / 'annotations' / 'instances_val2017.json')!r})
test_evaluator = val_evaluator
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1), visualization=dict(type='DetVisualizationHook', draw=False))
{extra}
''')


def _mim_data(tmp_path):
    return tmp_path / 'cls'


MIM_DATA = "shapes_generate = dict(image_size=32, num_train=64, num_val=32, seed=1)\n"


def simmim_config(tmp_path, name='simmim.py', extra=''):
    data = _mim_data(tmp_path)
    return write(tmp_path, name, f'''
_base_ = [{osp.join(CFG, 'simmim_linear-vit-t_shapes.py')!r}]
{MIM_DATA}
model = dict(backbone=dict(arch={TINY_ARCH}), neck=dict(in_channels=32))
train_dataloader = dict(batch_size=16, num_workers=0, dataset=dict(data_root={str(data)!r}, generate=shapes_generate))
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=2,
                        convert_to_iter_based=True)]
train_cfg = dict(max_epochs=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=2))
{extra}
''')


def mae_config(tmp_path, name='mae.py', extra=''):
    data = _mim_data(tmp_path)
    return write(tmp_path, name, f'''
_base_ = [{osp.join(CFG, 'mae_linear-vit-t_shapes.py')!r}]
{MIM_DATA}
model = dict(backbone=dict(arch={TINY_ARCH}), neck=dict(embed_dim=32, decoder_embed_dim=32, decoder_depth=1))
train_dataloader = dict(batch_size=16, num_workers=0, dataset=dict(data_root={str(data)!r}, generate=shapes_generate))
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=2,
                        convert_to_iter_based=True)]
train_cfg = dict(max_epochs=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=2))
{extra}
''')


def finetune_config(tmp_path, checkpoint, name='ft.py', extra=''):
    data = _mim_data(tmp_path)
    init = 'None' if checkpoint is None else f"dict(type='Pretrained', checkpoint={str(checkpoint)!r}, prefix='backbone.')"
    return write(tmp_path, name, f'''
_base_ = [{osp.join(CFG, 'linear-vit-t_simmim-pre_shapes-cls-ft.py')!r}]
{MIM_DATA}
model = dict(backbone=dict(arch={TINY_ARCH}, init_cfg={init}), head=dict(in_channels=32))
train_dataloader = dict(batch_size=16, num_workers=0,
                        dataset=dict(data_root={str(data)!r}, generate=shapes_generate, indices=32))
val_dataloader = dict(num_workers=0, dataset=dict(data_root={str(data)!r}, generate=shapes_generate))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(max_keep_ckpts=1, save_best=None))
{extra}
''')

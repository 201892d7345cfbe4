"""Checkpoints load with weights_only=True plus an explicit allowlist; anything else is refused, unexecuted."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import _load_checkpoint

import vla_mm  # noqa: F401
from vla_mm.compat import CheckpointLoadError


def _mmengine_like_checkpoint():
    hub = MessageHub.get_instance('test_ckpt_hub')
    for i in range(5):
        hub.update_scalar('train/loss', np.float64(1.0 / (i + 1)))
    hub.update_info('epoch', np.int64(3))
    hub.update_info('lr_array', np.arange(4, dtype=np.float32))
    return dict(meta=dict(epoch=3, iter=120, seed=0, dataset_meta=dict(classes=('a', 'b'))),
                state_dict={'w': torch.randn(3, 4)},
                message_hub=hub.state_dict(),
                optimizer={'state': {}, 'param_groups': [{'lr': 1e-3, 'params': [0]}]})


def test_mmengine_checkpoint_loads_with_allowlist(tmp_path):
    ckpt = _mmengine_like_checkpoint()
    path = tmp_path / 'ok.pth'
    torch.save(ckpt, path)
    loaded = _load_checkpoint(str(path), map_location='cpu')
    assert torch.equal(loaded['state_dict']['w'], ckpt['state_dict']['w'])
    buf = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buf, HistoryBuffer)
    assert buf.current() == pytest.approx(0.2)
    assert np.array_equal(loaded['message_hub']['runtime_info']['lr_array'], np.arange(4, dtype=np.float32))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_malicious_checkpoint_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': _Evil(marker)}, path)
    with pytest.raises(CheckpointLoadError) as e:
        _load_checkpoint(str(path), map_location='cpu')
    assert 'refusing to load' in str(e.value) and 'system' in str(e.value)
    assert str(path) in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize('damage', ['truncate', 'garbage', 'empty'])
def test_corrupt_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / 'bad.pth'
    torch.save(_mmengine_like_checkpoint(), path)
    data = path.read_bytes()
    if damage == 'truncate':
        path.write_bytes(data[:len(data) // 2])
    elif damage == 'garbage':
        path.write_bytes(b'not a checkpoint at all' * 10)
    else:
        path.write_bytes(b'')
    with pytest.raises(CheckpointLoadError) as e:
        _load_checkpoint(str(path), map_location='cpu')
    assert str(path) in str(e.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointLoadError, match='not found'):
        _load_checkpoint(str(tmp_path / 'nope.pth'), map_location='cpu')


def test_transformers5_does_not_break_mmpretrain_and_mmdet():
    """With transformers >= 5 installed (tests requirements), mmpretrain.models and mmdet's
    register_all_modules() import once vla_mm is imported first; without the fix they raise TypeError."""
    code = ('import vla_mm, mmpretrain.models, mmpretrain.utils.dependency as d; '
            'from mmdet.utils import register_all_modules; register_all_modules(); '
            'from importlib import metadata; print(metadata.version("transformers"), d.WITH_MULTIMODAL)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    version, flag = out.stdout.split()[-2:]
    if int(version.split('.')[0]) >= 5:
        assert flag == 'False'


class _Sneaky:
    """Uses the allowlisted getattr to reach something other than HistoryBuffer's statistics methods."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


def test_getattr_is_allowed_only_for_history_buffer_statistics(tmp_path):
    path = tmp_path / 'sneaky.pth'
    torch.save({'x': _Sneaky()}, path)
    with pytest.raises(CheckpointLoadError, match='refusing to load'):
        _load_checkpoint(str(path), map_location='cpu')

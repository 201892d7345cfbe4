"""vla_mm: vision models with linear-attention, state-space and RWKV-style token mixers on MMEngine.

Layout note: the Triton kernels live in the top-level folder ``ops/`` of the source tree but are shipped as
``vla_mm.ops`` (``package_dir`` below), so installing vla_mm never puts a generic package named ``ops`` into
site-packages.
"""
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version():
    ns = {}
    with open(osp.join(HERE, 'vla_mm', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


def parse_requirements(path):
    reqs = []
    with open(osp.join(HERE, path)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line and not line.startswith('-r'):
                reqs.append(line)
    return reqs


ops_packages = ['vla_mm.ops'] + ['vla_mm.ops.' + p for p in find_packages('ops')]
setup(
    name='vla_mm',
    version=read_version(),
    description='Linear-attention, state-space and RWKV-style vision models on MMEngine',
    long_description=open(osp.join(HERE, 'README.md')).read() if osp.exists(osp.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['vla_mm', 'vla_mm.*']) + ops_packages,
    package_dir={'vla_mm': 'vla_mm', 'vla_mm.ops': 'ops'},
    include_package_data=True,
    install_requires=[r for r in parse_requirements('requirements/runtime.txt')
                      if not r.startswith(('torch', 'mm'))],
    extras_require={'tests': parse_requirements('requirements/tests.txt')},
    zip_safe=False,
)

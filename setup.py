"""Install tff_med (`pip install -e .`). Dependencies: see requirements.txt and the Makefile."""

import setuptools

setuptools.setup(
    name='tff_med',
    version='0.1.0',
    description='Cross-silo federated learning for hospitals on TensorFlow Federated',
    packages=setuptools.find_packages(include=['tff_med', 'tff_med.*', 'experiments']),
    python_requires='>=3.11,<3.12',
)

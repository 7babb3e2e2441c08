"""si_jax: a JAX-native research codebase for self-improving language models."""

import setuptools

# Pinned to the versions the test suite was run with (Python 3.11, CPU).
RUNTIME = [
    'jax==0.10.2',
    'jaxlib==0.10.2',
    'ml-dtypes==0.7.0',  # bfloat16 in numpy (jax's own dependency; si_jax.models.hf reads it).
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'grain==0.2.18',
    'tensorflow-datasets==4.9.10',
    'array-record==0.8.6',
    'sentencepiece==0.2.3',
    'ml-collections==1.1.0',
    'absl-py==2.5.1',
    'numpy==2.4.6',
    'matplotlib==3.11.2',
    'tqdm==4.70.1',
    'importlib_resources==7.1.0',  # tensorflow-datasets needs it without TensorFlow.
    'tensorboardX==2.6.5',  # TensorBoard event files without TensorFlow.
]
TEST = ['pytest==9.0.3', 'pytest-xdist==3.8.0', 'scipy==1.17.1', 'hypothesis==6.155.2']

setuptools.setup(
    name='si_jax',
    version='0.1.0',
    description='Self-improving language models in JAX: acquisition, selection, GRO, refinement, '
                'autonomous evaluation.',
    packages=setuptools.find_packages(include=['si_jax', 'si_jax.*', 'configs']),
    python_requires='>=3.11',
    install_requires=RUNTIME,
    extras_require={
        'test': TEST,
        # Parity checks against reference implementations only; never imported at run time.
        'parity': ['torch==2.13.0', 'transformers==5.25.0', 'safetensors==0.8.0'],
    },
)

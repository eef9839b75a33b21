"""tf_slwta: adversarially robust image classifiers with stochastic LWTA layers."""

import setuptools

setuptools.setup(
    name='tf_slwta',
    version='0.1.0',
    description=('Train image classifiers that stay correct under adversarial '
                 'attack (FGSM, PGD, Carlini-Wagner), with stochastic '
                 'local winner-takes-all layers, and measure it honestly.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['tf_slwta', 'tf_slwta.*']),
    python_requires='>=3.10',
    install_requires=[
        'tensorflow>=2.21,<2.22',
        'keras>=3.15',
        'tensorflow-probability>=0.25,<0.26',
        'tf-keras>=2.21,<2.22',  # tensorflow-probability refuses to import without it.
        'tensorflow-datasets>=4.9',
        'tensorboard>=2.20',  # tf.summary needs it; the tensorflow wheel no longer pulls it in.
        'absl-py>=2.1',
        'numpy>=1.26',
        'ml_dtypes>=0.5',  # Machine epsilon of every float dtype, bfloat16 included (layers/lwta.py).
        'matplotlib>=3.8',
        # Warm-up records and the gRPC client use TF Serving's protos.
        'tensorflow-serving-api>=2.21,<2.22',
    ],
    extras_require={
        'test': ['pytest>=8', 'adversarial-robustness-toolbox>=1.17'],
    },
)

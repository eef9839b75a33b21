"""tf_slwta: adversarially robust image classifiers with stochastic LWTA layers.

`pip install .` gives the `tf-slwta` command (the same as `python main.py`
in the repository, and `python -m tf_slwta`) and the recipes, which ship
inside the package (tf_slwta/flags; flags/ is a link to it) and are found
by name from any folder. Upper bounds keep every dependency on the major
version the test suite ran with.
"""

import setuptools

setuptools.setup(
    name='tf_slwta',
    version='0.1.0',
    description=('Train image classifiers that stay correct under adversarial '
                 'attack (FGSM, PGD, Carlini-Wagner, AutoAttack), with '
                 'stochastic local winner-takes-all layers, and measure it '
                 'honestly.'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author='tf_slwta developers',
    license='Apache-2.0',
    license_files=['LICENSE'],
    keywords=['adversarial robustness', 'adversarial training',
              'stochastic LWTA', 'local winner-takes-all',
              'Indian buffet process', 'AutoAttack', 'randomized smoothing',
              'gradient masking', 'TensorFlow', 'Keras', 'TF Serving'],
    classifiers=[
        'Development Status :: 3 - Alpha',
        'Environment :: Console',
        'Environment :: GPU',
        'Intended Audience :: Science/Research',
        'Intended Audience :: Developers',
        'Operating System :: POSIX :: Linux',
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3 :: Only',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
        'Topic :: Scientific/Engineering :: Image Recognition',
    ],
    packages=setuptools.find_packages(include=['tf_slwta', 'tf_slwta.*']),
    # The recipes (flagfiles), nested folders included.
    package_data={'tf_slwta': ['flags/*.cfg', 'flags/*/*.cfg',
                               'flags/*/*/*.cfg']},
    entry_points={'console_scripts': ['tf-slwta = tf_slwta.cli.main:console']},
    python_requires='>=3.10',
    install_requires=[
        'tensorflow>=2.21,<2.22',
        'keras>=3.15,<4',
        'tensorflow-probability>=0.25,<0.26',
        'tf-keras>=2.21,<2.22',  # tensorflow-probability refuses to import without it.
        'tensorflow-datasets>=4.9,<5',
        # tensorflow-datasets imports it to prepare mnist and cifar10 but does
        # not declare it.
        'importlib_resources>=6,<8',
        'tensorboard>=2.20,<3',  # tf.summary needs it; the tensorflow wheel no longer pulls it in.
        'absl-py>=2.1,<3',
        'numpy>=1.26,<3',
        'ml_dtypes>=0.5,<1',  # Machine epsilon of every float dtype, bfloat16 included (layers/lwta.py).
        'matplotlib>=3.8,<4',
        # Warm-up records and the gRPC client use TF Serving's protos.
        'tensorflow-serving-api>=2.21,<2.22',
    ],
    extras_require={
        'test': ['pytest>=8,<10', 'pytest-xdist>=3.8,<4',
                 'adversarial-robustness-toolbox>=1.17,<2',
                 # Mutation score of the audit's checks (BENCHMARKS.md).
                 'mutmut>=2.4,<3'],
    },
)

"""The config layer: the only package that imports Hydra and omegaconf.

It turns configs into objects (``config.py``: validation at the boundary, the model and datasets
built from the YAML files, what a checkpoint's stored config may name in ``stored_config.py``) and
holds one module per command, each a Hydra app with a ``run()`` entry point:

    roilens train|eval|infer|convert|dump-proposals|analyze|visualize-data|visualize-roi|benchmark ...

``python tools/<name>.py ...`` runs the same commands from a checkout (the tools are thin shims).
Nothing here is imported by ``detector`` itself: the framework never sees a config object.
"""

from detector.cli.openmp import default_spin_count

# Before any command imports torch: libgomp reads it once, when loaded (detector/cli/openmp.py).
default_spin_count()

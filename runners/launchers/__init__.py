"""Launchers: how a job is started and watched on its host.

``base.py`` holds the :class:`~runners.launchers.base.Launcher` protocol and the
:class:`~runners.launchers.base.Observation` it reports; ``direct.py`` and ``slurm.py``
are the two launchers; ``runners/factories.py`` picks one from a host's config. This
file imports nothing, so importing one launcher module never pulls in the others.
"""

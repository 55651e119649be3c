"""The bundled example repository (``repo.py``): the default of every command's ``--repo``."""

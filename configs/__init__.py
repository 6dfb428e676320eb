"""The shipped experiment configs. This folder is installed as the package ``jaxseg.configs``
(pyproject.toml), so `jaxseg train --config NAME` finds them from any folder."""

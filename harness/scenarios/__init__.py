"""The scenarios, one module each; :mod:`harness.registry` names them."""

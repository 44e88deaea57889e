"""embedders: pure computation (arrays, tensors, dataclasses); never imports taskreg.registry."""

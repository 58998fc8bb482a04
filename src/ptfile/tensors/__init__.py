"""What the engine builds: dtypes, checked storage views, tensor rebuilds, special tensors, objects, metadata."""

"""Generated protobuf code. Regenerate with `make protos`; import only from codec modules."""
